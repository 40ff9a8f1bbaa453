"""A llama.cpp context with one KV stream per sequence (``StreamSession``)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from edgescale.errors import KVCacheFull
from edgescale.runtime import _llama_ffi as ffi
from edgescale.runtime.engine import CellBook, Logits, check_prompt
from edgescale.runtime.llama_session import LlamaSession

EXACT_ROWS = 32  # exact streams: rows of one sequence in one pass (llama.cpp tiles its attention from 64)
# llama.cpp's CPU attention splits the cells of a pass with one row of one stream across threads
# once it spans 512 cells (its cell count is rounded up to 256): from position 256 on
SPLIT_FROM = 256


class StreamSession(LlamaSession):
    """A context with one KV stream per sequence (llama.cpp ``kv_unified`` off): each
    sequence attends to its own stream only, so a step's attention no longer grows with
    the other sequences' cells (bench/kv_layout.py). What that takes:

    * a prompt read for several sequences is read into the first and copied into the
      others' streams (llama.cpp copies whole streams, at the next decode);
    * a fork copies the parent's stream (then drops the positions past ``n_tokens``);
      probes therefore run in their sample's own stream and are cut off after
      (``probes_in_place``, ``truncate``);
    * a removed sequence's stream is emptied at once (no parking: nothing else lives in
      it, so its next sequence starts at cell 0 again, in position order);
    * llama.cpp splits a batch into one pass per run of consecutive sequence ids (in
      increasing order), so feeds are decoded sorted by id, and a gap of up to
      ``fill_gaps`` ids between live sequences is filled with one throw-away token each
      (a row costs about a third of what a second pass does), dropped after the decode.
      (The scheduler also moves streams so that live ones stand together: SharedContext.)

    ``exact`` (the ``exact`` layout: ``--deterministic``): a sequence's logits must not
    depend on what else is decoded with it. llama.cpp's CPU attention sums a sequence's
    cells in another order when a pass holds a single row of a single stream and 512 or
    more cells (it splits the cells across threads), when a stream has 64 or more rows in
    a pass (a tiled kernel), or when a pass covers every stream of the context (measured:
    logits up to 0.8 apart). So exactly: single tokens go in one pass with every gap
    filled, and with a throw-away companion row when alone past ``SPLIT_FROM``; longer
    feeds go in passes of their own of 2 to ``EXACT_ROWS`` rows; one stream of the
    context is never used.
    """

    def __init__(self, ctx: ffi.Context, *, kv_bytes_per_cell: float, release: Callable[[ffi.Context], None],
                 fill_gaps: int = 2, exact: bool = False) -> None:
        super().__init__(ctx, kv_bytes_per_cell=kv_bytes_per_cell, release=release)
        self.book = CellBook(copy_on_fork=True)
        self.stream_cells = ctx.n_ctx_seq
        self.fill_gaps = fill_gaps
        self.exact = exact
        self.n_seq_max = ctx.params.n_seq_max - 1 if exact else ctx.params.n_seq_max  # exact: the last is unused
        self.n_cells = self.n_seq_max * self.stream_cells  # the cells of the streams in use
        self.dummy_rows = 0  # throw-away tokens decoded to keep runs of ids unbroken (benches read it)
        self.probes_in_place = True  # a fork would copy a whole stream

    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> Logits:
        check_prompt(tokens, self.stream_cells)
        ids = list(seq_ids)
        row = np.array(self.decode([(ids[0], list(tokens))])[0])
        for s in ids[1:]:
            self.fork(ids[0], s)
        return row

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        self.ctx.seq_rm(dst)
        self.ctx.seq_cp(src, dst)
        if n_tokens is not None and n_tokens < self.book.position(src):
            self.ctx.seq_rm(dst, n_tokens)
        self.book.fork(src, dst, n_tokens)

    def remove(self, seq_id: int) -> None:
        self.book.remove(seq_id)
        self.ctx.seq_rm(seq_id)

    def retains(self, seq_id: int) -> bool:
        return False

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        self.ctx.seq_rm(seq_id, n_tokens)
        self.book.truncate(seq_id, n_tokens)

    def _decode_batch(self, pieces: Sequence[tuple[int, Sequence[int], bool]]) -> Logits:
        if not self.exact:
            return self._decode_run(pieces, fill=self.fill_gaps, companion=False)
        rows: dict[int, np.ndarray] = {}
        singles = [i for i, (_, toks, _) in enumerate(pieces) if len(toks) == 1]
        if singles:
            got = self._decode_run([pieces[i] for i in singles], fill=self.n_seq_max, companion=True)
            for j, i in enumerate(i for i in singles if pieces[i][2]):
                rows[i] = np.array(got[j])
        for i, (seq, toks, want) in enumerate(pieces):
            if len(toks) == 1:
                continue
            chunks = [toks[s : s + EXACT_ROWS] for s in range(0, len(toks), EXACT_ROWS)]
            for n, chunk in enumerate(chunks):
                last = n == len(chunks) - 1
                got = self._decode_run([(seq, chunk, want and last)], fill=0, companion=len(chunk) == 1)
                if want and last:
                    rows[i] = np.array(got[0])
        wanted = [rows[i] for i in range(len(pieces)) if pieces[i][2]]
        return np.stack(wanted) if wanted else np.empty((0, self.ctx.model.n_vocab), np.float32)

    def _decode_run(self, pieces: Sequence[tuple[int, Sequence[int], bool]], *, fill: int,
                    companion: bool) -> Logits:
        """One llama_decode of ``pieces`` sorted by id, gaps of up to ``fill`` ids filled; with
        ``companion``, a lone single row gets a throw-away neighbour."""
        order = sorted(range(len(pieces)), key=lambda i: pieces[i][0])
        ordered = [pieces[i] for i in order]
        seqs = [seq for seq, _, _ in ordered]
        room = self._batch.capacity - sum(len(toks) for _, toks, _ in pieces)
        dummies = self._gap_fillers(seqs, room, fill)
        if companion and len(pieces) == 1 and len(pieces[0][1]) == 1 and self.book.position(seqs[0]) >= SPLIT_FROM:
            dummies.update(self._companion(seqs[0]))
        n_out, added = self._fill_batch(ordered, sorted(dummies.items()))
        t0 = time.perf_counter()
        try:
            self.ctx.decode(self._batch)
        finally:
            self.decode_seconds += time.perf_counter() - t0
            for seq, pos in dummies.items():
                self.ctx.seq_rm(seq, pos)
        self.dummy_rows += len(dummies)
        for seq, n in added.items():
            self.book.append(seq, n)
        rows = self.ctx.logits(n_out)
        if order == sorted(order):
            return rows
        # rows come in id order; hand them back in the order the feeds came
        wanted = [i for i in order if pieces[i][2]]
        return rows[np.argsort(wanted)]

    def _free_stream(self, seq: int) -> int | None:
        """The position a throw-away token would take in ``seq``'s stream (None: no room)."""
        if not 0 <= seq < self.n_seq_max:
            return None
        pos = self.book.position(seq)
        return pos if pos < self.stream_cells else None

    def _gap_fillers(self, seqs: Sequence[int], room: int, fill: int) -> dict[int, int]:
        """Ids to fill with a throw-away token (id -> its position): the gaps of at most
        ``fill`` ids between consecutive live ones, whose streams have room, as many as the
        batch has ``room`` for."""
        out: dict[int, int] = {}
        for a, b in zip(seqs, seqs[1:]):
            if 0 < b - a - 1 <= min(fill, room - len(out)):
                gap = {g: self._free_stream(g) for g in range(a + 1, b)}
                if all(pos is not None for pos in gap.values()):
                    out.update({g: pos for g, pos in gap.items() if pos is not None})
        return out

    def _companion(self, seq: int) -> dict[int, int]:
        for g in (seq + 1, seq - 1):
            pos = self._free_stream(g)
            if pos is not None:
                return {g: pos}
        raise KVCacheFull("exact decoding needs a stream next to a lone sequence with room for one token")
