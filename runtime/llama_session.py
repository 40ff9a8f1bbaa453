"""A llama.cpp context as a decode session: one unified KV cache shared by a query's
sequences (``LlamaSession``). All C calls go through ``runtime._llama_ffi``."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from edgescale.errors import KVCacheFull, UsageError
from edgescale.runtime import _llama_ffi as ffi
from edgescale.runtime.engine import CellBook, Feed, Logits, check_prompt


class LlamaSession:
    """A context sized for one query. Reused across queries of the same shape.

    Cells of a sequence that ends are *parked*, not handed back to llama.cpp at
    once: they count as free here (the book drops them), but llama.cpp keeps them
    until a decode finds no room, and only then are all parked sequences removed
    and the decode retried. The reason is exactness: llama.cpp fills freed cells
    first, and a freed cell lies between the remaining sequences' earlier cells,
    so their next tokens would be stored out of position order; attention then
    sums the same terms in another order and the logits change at rounding level
    (measured: up to 2.6 logits on SmolLM2, a third of sampled continuations
    diverging from their single-sequence runs). Parked, every sequence's cells stay
    in position order and a batch computes exactly what single runs compute, as
    long as the context has room.
    """

    def __init__(self, ctx: ffi.Context, *, kv_bytes_per_cell: float,
                 release: Callable[[ffi.Context], None]) -> None:
        self._release = release  # hands the context back to its engine for reuse
        self.ctx = ctx
        self.n_seq_max = ctx.params.n_seq_max
        self.n_cells = ctx.n_ctx
        self.book = CellBook()
        self.decode_seconds = 0.0  # wall time inside llama_decode (benches read it)
        self._parked: dict[int, int] = {}  # ended sequence -> first cell only it held; llama.cpp still has them
        self.reclaims = 0  # decodes that needed the parked cells back
        self.probes_in_place = False
        self._batch = ffi.Batch(ctx.n_batch, ctx.params.n_seq_max)
        self._kv_per_cell = kv_bytes_per_cell

    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> Logits:
        check_prompt(tokens, self.n_cells)
        batch, step = self._batch, self.ctx.n_batch
        ids = list(seq_ids)
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            batch.clear()
            last = start + len(chunk) == len(tokens)
            for j, tok in enumerate(chunk):
                batch.add(tok, start + j, ids, last and j == len(chunk) - 1)
            self.ctx.decode(batch)
        self.book.shared_prompt(len(tokens), ids)
        return self.ctx.logits(1)[0]

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        cap = self.ctx.n_batch
        if sum(len(toks) for _, toks in feeds) <= cap:
            return self._decode_batch([(seq, toks, True) for seq, toks in feeds])
        # More tokens than one batch holds (a long cue, many probes): split feeds
        # into pieces, pack them into batches, keep each feed's final row.
        rows: list[np.ndarray] = []
        group: list[tuple[int, Sequence[int], bool]] = []
        size = 0
        for seq, toks in feeds:
            for start in range(0, len(toks), cap):
                piece = toks[start : start + cap]
                if size + len(piece) > cap:
                    rows.extend(self._copy_rows(group))
                    group, size = [], 0
                group.append((seq, piece, start + cap >= len(toks)))
                size += len(piece)
        rows.extend(self._copy_rows(group))
        return np.stack(rows)

    def decode_all(self, seq_id: int, tokens: Sequence[int]) -> Logits:
        check_prompt(tokens, self.n_cells)
        cap = self.ctx.n_batch  # one piece per token: each asks for its own row
        parts = [np.array(self._decode_batch([(seq_id, [t], True) for t in tokens[start : start + cap]]))
                 for start in range(0, len(tokens), cap)]
        return np.concatenate(parts)

    def _copy_rows(self, group: Sequence[tuple[int, Sequence[int], bool]]) -> list[np.ndarray]:
        out = self._decode_batch(group)
        return [np.array(row) for row in out]

    def _decode_batch(self, pieces: Sequence[tuple[int, Sequence[int], bool]]) -> Logits:
        """Decode pieces (seq, tokens, wants_logits) in one llama_decode; return the wanted rows."""
        batch, book = self._batch, self.book
        for seq, _, _ in pieces:
            if self._parked.pop(seq, None) is not None:  # an ended sequence's id in use again
                self.ctx.seq_rm(seq)
        n_out, added = self._fill_batch(pieces)
        t0 = time.perf_counter()
        try:
            self.ctx.decode(batch)  # on failure llama.cpp restores its memory; the book is untouched
        except KVCacheFull:
            if not self._parked:
                raise
            self._reclaim()
            self.ctx.decode(batch)
        finally:
            self.decode_seconds += time.perf_counter() - t0
        for seq, n in added.items():
            book.append(seq, n)
        return self.ctx.logits(n_out)

    def _fill_batch(self, pieces: Sequence[tuple[int, Sequence[int], bool]],
                    fillers: Sequence[tuple[int, int]] = ()) -> tuple[int, dict[int, int]]:
        """Put ``pieces`` (seq, tokens, wants_logits) in the batch at each sequence's next
        positions, and a throw-away token (no logits) for each (seq, position) of ``fillers``
        before the first piece of a higher id. Returns the rows wanted and the tokens added
        per sequence."""
        batch, book = self._batch, self.book
        batch.clear()
        n_out = 0
        added: dict[int, int] = {}
        rest = list(fillers)
        for seq, toks, want in pieces:
            while rest and rest[0][0] < seq:
                g, pos = rest.pop(0)
                batch.add(0, pos, (g,), False)
            pos = book.position(seq) + added.get(seq, 0)
            last = len(toks) - 1
            for j, tok in enumerate(toks):
                out = want and j == last
                batch.add(tok, pos + j, (seq,), out)
                n_out += out
            added[seq] = added.get(seq, 0) + len(toks)
        for g, pos in rest:
            batch.add(0, pos, (g,), False)
        return n_out, added

    def remove(self, seq_id: int) -> None:
        """Drop a sequence. Its cells are free at once for the book; llama.cpp gets
        them back at once when they lie after every other sequence's cells (a probe's
        fork, removed before its parents go on), otherwise when that becomes true or a
        decode needs the room (see the class notes)."""
        freed = self.book.remove(seq_id)
        if freed:
            self._parked[seq_id] = freed[0]
        elif seq_id not in self._parked:
            self.ctx.seq_rm(seq_id)  # held nothing of its own (a fork that never grew)
        last = self.book.last_cell()
        for s, first in list(self._parked.items()):
            if first > last:
                self.ctx.seq_rm(s)
                del self._parked[s]

    def retains(self, seq_id: int) -> bool:
        return seq_id in self._parked

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        raise UsageError("a unified cache probes on forks (cutting a sequence short would break cell order)")

    def _reclaim(self) -> None:
        for seq_id in self._parked:
            self.ctx.seq_rm(seq_id)
        self._parked.clear()
        self.reclaims += 1

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        if self._parked.pop(dst, None) is not None:  # an id used before: its old cells go first
            self.ctx.seq_rm(dst)
        self.ctx.seq_cp(src, dst, n_tokens)
        self.book.fork(src, dst, n_tokens)

    def cells_used(self) -> int:
        return self.book.used

    def kv_bytes_used(self) -> int:
        return int(self.book.used * self._kv_per_cell)

    def kv_bytes_peak(self) -> int:
        return int(self.book.peak * self._kv_per_cell)

    def kv_bytes_allocated(self) -> int:
        return int(self.n_cells * self._kv_per_cell)

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        self.ctx.set_abort_check(check)

    def close(self) -> None:
        """End the query: clear the cache and hand the context back for reuse."""
        self.ctx.set_abort_check(None)
        self._batch.close()
        self._parked.clear()
        self.ctx.clear()
        self._release(self.ctx)
