"""One decode session shared by many queries, and each query's view of it (a lane).

A :class:`SharedContext` owns one :class:`~edgescale.runtime.engine.DecodeSession`
(one llama.cpp context: one unified KV cache, or one stream per sequence id) and
hands out sequence ids. A
:class:`Lane` is what one query's generator sees: a DecodeSession whose sequence
ids 0..n-1 are the query's own, mapped onto ids of the shared session, with the
query's own cell accounting (for its result's KV figures). Lanes decode through the
shared session directly only for probes; the scheduler decodes every lane's step
feeds together (:meth:`SharedContext.decode`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from edgescale.errors import UsageError
from edgescale.runtime.engine import CellBook, DecodeSession, Engine, Feed, Logits
from edgescale.runtime.kv_types import KvType


class SharedContext:
    """A session sized for ``n_cells`` cells and ``n_ids`` sequence ids, shared by lanes."""

    def __init__(self, engine: Engine, *, n_cells: int, n_ids: int, max_batch: int,
                 kv_layout: str | None = None, kv_type: KvType | None = None) -> None:
        self.engine = engine
        self.layout = engine.memory_layout if kv_layout is None else engine.kv_layouts[kv_layout]
        self.session: DecodeSession = engine.session(n_seqs=n_ids, n_cells=n_cells, max_batch=max_batch,
                                                     kv_layout=self.layout.name, kv_type=kv_type)
        self.n_cells = self.session.n_cells
        self.n_ids = n_ids
        # with one stream per sequence id, what one sequence (a row) may hold; else the whole cache
        self.stream_cells = self.n_cells // n_ids if self.layout.streams else self.n_cells
        self.max_batch = max_batch
        self._free = list(range(n_ids - 1, -1, -1))  # a stack: the lowest ids first
        self._owner: dict[int, tuple[Lane, int]] = {}  # shared id -> the lane and its local id
        self.moves = 0  # streams moved to keep live sequences on consecutive ids (compact)
        # called before a lane decodes on its own (a probe, between the shared steps): the
        # logits rows other lanes hold are views the backend is about to overwrite
        self.before_side_decode: Callable[[], None] | None = None
        kv = kv_type if kv_type is not None else KvType(self.layout.kv_type, self.layout.kv_type)
        self._bytes_per_cell = engine.info.kv_bytes_per_cell(kv.k, kv.v)

    @property
    def free_ids(self) -> int:
        return len(self._free)

    def take_ids(self, n: int) -> list[int]:
        """``n`` free ids, those whose old cells the backend no longer keeps first: reusing an
        id that still holds parked cells frees them, and the holes they leave may let other
        sequences' next tokens land before their earlier ones (see LlamaSession)."""
        if n > len(self._free):
            raise UsageError(f"{n} sequence ids asked for, {len(self._free)} free")
        clean = [i for i in reversed(self._free) if not self.session.retains(i)]
        kept = [i for i in reversed(self._free) if self.session.retains(i)]
        taken = (clean + kept)[:n]
        self._free = [i for i in self._free if i not in taken]
        return taken

    def give_ids(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.session.remove(i)  # whatever the id still holds goes (parked if others need order)
        self._free.extend(ids)
        self._free.sort(reverse=True)

    def lane(self, n_ids: int, reserved_cells: int) -> Lane:
        lane = Lane(self, self.take_ids(n_ids), reserved_cells)
        for local, shared in enumerate(lane.ids):
            self._owner[shared] = (lane, local)
        return lane

    def release(self, lane: Lane) -> None:
        """A lane is done: its ids (and the cells only they hold) come back."""
        for shared in lane.ids:
            self._owner.pop(shared, None)
        self.give_ids(lane.ids)

    def compact(self, live: Sequence[int], max_moves: int = 16) -> int:
        """With one stream per id: move the streams of the sequences a step feeds (``live``,
        shared ids) onto ids that hold nothing, so that they stand on consecutive ids.
        llama.cpp decodes a batch in one pass per run of consecutive ids (a pass costs
        about what a few rows do), and sequences that end leave holes. A move copies one
        stream (llama.cpp does it at the next decode, bitwise: the sequence computes on as
        before) and swaps the two ids between their owners; the window of ids that needs the
        fewest moves is used, when it needs at most ``max_moves``. Returns the moves made."""
        if not self.layout.streams or len(live) < 2:
            return 0
        want = set(live)
        ids = sorted(want)
        if ids[-1] - ids[0] + 1 == len(ids):
            return 0
        free = set(self._free)
        # each id: live, empty (a free id, or a lane's id that holds no cells), or holding cells
        kind = ["L" if i in want else "E" if i in free or self._holds_nothing(i) else "H" for i in range(self.n_ids)]
        n = len(ids)
        best: tuple[int, int] | None = None  # (moves, start)
        for start in range(self.n_ids - n + 1):
            window = kind[start:start + n]
            if "H" in window:
                continue
            moves = n - window.count("L")
            if best is None or moves < best[0]:
                best = (moves, start)
        if best is None or best[0] == 0 or best[0] > max_moves:
            return 0
        start = best[1]
        targets = [i for i in range(start, start + n) if kind[i] == "E"]
        movers = [i for i in ids if not start <= i < start + n]
        for src, dst in zip(movers, targets):
            self._move(src, dst)
        self.moves += len(movers)
        return len(movers)

    def _holds_nothing(self, shared: int) -> bool:
        owner = self._owner.get(shared)
        return owner is not None and owner[0].book.position(owner[1]) == 0

    def _move(self, src: int, dst: int) -> None:
        """The stream of ``src`` to the empty ``dst``; the two ids swap owners."""
        self.session.fork(src, dst)
        self.session.remove(src)
        mover, other = self._owner.pop(src), self._owner.pop(dst, None)
        mover[0].ids[mover[1]] = dst
        self._owner[dst] = mover
        if other is not None:
            other[0].ids[other[1]] = src
            self._owner[src] = other
        else:  # dst was a free id: src is one now
            self._free = sorted((set(self._free) - {dst}) | {src}, reverse=True)

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        """One decode of feeds given in shared sequence ids."""
        return self.session.decode(feeds)

    def cells_used(self) -> int:
        return self.session.cells_used()

    def kv_bytes(self, cells: int) -> int:
        return int(cells * self._bytes_per_cell)

    def close(self) -> None:
        self.session.close()


class Lane:
    """One query's view of a SharedContext: a DecodeSession over its own sequence ids."""

    def __init__(self, shared: SharedContext, ids: list[int], reserved_cells: int) -> None:
        self.shared = shared
        self.ids = ids  # local id i -> shared id ids[i]
        self.n_seq_max = len(ids)
        self.n_cells = reserved_cells
        # this query's cells, counted as if it had the session alone
        self.book = CellBook(copy_on_fork=shared.layout.streams)
        self._closed = False

    def to_shared(self, feeds: Sequence[Feed]) -> list[Feed]:
        return [(self.ids[seq], toks) for seq, toks in feeds]

    def fed(self, feeds: Sequence[Feed]) -> None:
        """Account for feeds (local ids) the shared session decoded."""
        for seq, toks in feeds:
            self.book.append(seq, len(toks))

    # -- DecodeSession ----------------------------------------------------------------
    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> Logits:
        raise UsageError("a lane reads its prompt through the shared steps (BatchGenerator with a lane)")

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        """Decode on its own, between the shared steps (a probe)."""
        if self.shared.before_side_decode is not None:
            self.shared.before_side_decode()
        rows = self.shared.decode(self.to_shared(feeds))
        self.fed(feeds)
        return rows

    def decode_all(self, seq_id: int, tokens: Sequence[int]) -> Logits:
        raise UsageError("a lane does not score prompts (runtime.token_logprobs opens a session of its own)")

    def remove(self, seq_id: int) -> None:
        self.shared.session.remove(self.ids[seq_id])
        self.book.remove(seq_id)

    def retains(self, seq_id: int) -> bool:
        return self.shared.session.retains(self.ids[seq_id])

    @property
    def probes_in_place(self) -> bool:
        return self.shared.session.probes_in_place

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        self.shared.session.truncate(self.ids[seq_id], n_tokens)
        self.book.truncate(seq_id, n_tokens)

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        self.shared.session.fork(self.ids[src], self.ids[dst], n_tokens)
        self.book.fork(src, dst, n_tokens)

    def adopt_prefix(self, src_shared: int, n_tokens: int) -> None:
        """Sequence 0 starts with ``n_tokens`` cells shared from another shared sequence (the
        prefix cache's): counted as this query's, as if it had read them."""
        self.shared.session.fork(src_shared, self.ids[0], n_tokens)
        self.book.append(0, n_tokens)

    def cells_used(self) -> int:
        return self.book.used

    def kv_bytes_used(self) -> int:
        return self.shared.kv_bytes(self.book.used)

    def kv_bytes_peak(self) -> int:
        return self.shared.kv_bytes(self.book.peak)

    def kv_bytes_allocated(self) -> int:
        return self.shared.kv_bytes(self.n_cells)

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        """Deadlines are checked between the shared steps, not inside a decode."""

    def close(self) -> None:
        """Give the ids (and the cells only they hold) back to the shared context."""
        if not self._closed:
            self._closed = True
            self.shared.release(self)
