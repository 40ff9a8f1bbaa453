"""A decode session over an ONNX decoder: prefill once, decode rows in one batch.

The KV cache is :class:`KVRows` (right-padded rows, one per sequence). Each run
binds, with ONNX Runtime's IO binding, the same buffer views as
``past_key_values.N.*`` and ``present.N.*``, so ``GroupQueryAttention`` writes
the new keys and values in place and nothing is copied per step. Rows keep
their own lengths: ``attention_mask`` row b is ``length_b + new`` ones then
zeros, ``position_ids`` continue each row's own positions.

* ``prefill`` runs the prompt once with batch 1 (in chunks, so an abort check
  can stop a long prompt between chunks) and copies the row to the other ids.
* ``decode`` with one token per feed runs every fed row in one batch; feeds of
  several tokens (probe cues) run one row at a time, since the CPU attention
  kernel appends several tokens to a past only for batch 1.
* ``remove`` frees the row at once; ``fork`` copies the parent's valid cells.
  A feed for a sequence that holds nothing starts it at position 0 (as llama.cpp does).

The logical cell budget of ``n_cells`` (what the planner sized, counted as a
unified cache counts it: shared prompt once) is enforced as llama.cpp enforces
its context size: a decode that would exceed it raises ``KVCacheFull``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgescale.errors import DecodeAborted, DecodeError, KVCacheFull, UsageError
from edgescale.runtime.engine import CellBook, Feed, Logits, check_prompt
from edgescale.runtime.onnx_config import OnnxModelConfig
from edgescale.runtime.onnx_errors import first_line, ort_exceptions
from edgescale.runtime.onnx_kv import KVRows

if TYPE_CHECKING:
    from edgescale.models.info import ModelInfo

PREFILL_CHUNK = 512


class OnnxSession:
    """KV rows for one query, driven by ``BatchGenerator`` like any DecodeSession."""

    def __init__(
        self, config: OnnxModelConfig, info: ModelInfo, ort_session: Any, *, n_seqs: int, n_cells: int,
        batch_invariant: bool = False,
    ) -> None:
        self._ort = ort_session  # the engine's onnxruntime InferenceSession
        self.n_seq_max = n_seqs
        self.n_cells = n_cells
        self._pad_single = batch_invariant
        cfg = config
        # One spare row when single rows are padded to two (see _run_padded).
        slots = n_seqs + 1 if batch_invariant and n_seqs == 1 else n_seqs
        self.kv = KVRows(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, slots, info.n_ctx_train)
        self.book = CellBook()  # logical cells (shared prompt once), for the n_cells budget
        self._bytes_per_cell = info.kv_bytes_per_cell("f32", "f32")
        self._peak_cells = 0
        self._abort: Callable[[], bool] | None = None
        self._io: Any = ort_session.io_binding()
        # (start, stop, kv generation) of the slots whose KV views are bound now
        self._bound: tuple[int, int, int] | None = None
        self._logits = np.zeros((slots, 1, cfg.n_vocab), np.float32)
        self._closed = False
        from onnxruntime import OrtValue

        # Only the last position's logits (an overridable initialiser: bound as an OrtValue).
        self._keep = OrtValue.ortvalue_from_numpy(np.array(1, dtype=np.int64))
        self._io.bind_ortvalue_input("num_logits_to_keep", self._keep)

    # -- running the graph -----------------------------------------------------
    def _bind_kv(self, start: int, stop: int) -> None:
        key = (start, stop, self.kv.generation)
        if self._bound == key:
            return
        from onnxruntime import OrtValue

        io = self._io
        for i, (k, v) in enumerate(self.kv.views(start, stop)):
            kv_k, kv_v = OrtValue.ortvalue_from_numpy(k), OrtValue.ortvalue_from_numpy(v)
            io.bind_ortvalue_input(f"past_key_values.{i}.key", kv_k)
            io.bind_ortvalue_output(f"present.{i}.key", kv_k)
            io.bind_ortvalue_input(f"past_key_values.{i}.value", kv_v)
            io.bind_ortvalue_output(f"present.{i}.value", kv_v)
        self._bound = key

    def _run(
        self, start: int, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> Logits:
        """Append ``tokens`` (n, S) to the rows of slots [start, start + n) whose current
        lengths are ``lengths``; returns the (n, V) logits of each row's last new token."""
        if self._abort is not None and self._abort():
            raise DecodeAborted("decode aborted")
        if tokens.size == 1 and self._pad_single:
            return self._run_padded(start, tokens, lengths)
        return self._run_rows(start, tokens, lengths)

    def _run_rows(
        self, start: int, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> Logits:
        n, s = tokens.shape
        ends = lengths + s
        self.kv.ensure_capacity(int(ends.max()))
        self._bind_kv(start, start + n)
        total = int(ends.max())
        mask = (np.arange(total, dtype=np.int64)[None, :] < ends[:, None]).astype(np.int64)
        positions = lengths[:, None] + np.arange(s, dtype=np.int64)[None, :]
        io = self._io
        io.bind_cpu_input("input_ids", tokens)
        io.bind_cpu_input("attention_mask", mask)
        io.bind_cpu_input("position_ids", positions)
        out = self._logits[:n]
        io.bind_output("logits", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        try:
            self._ort.run_with_iobinding(io)
        except ort_exceptions() as exc:
            raise DecodeError(f"onnxruntime run failed: {first_line(exc)}") from None
        return out[:, 0, :]

    def _run_padded(
        self, slot: int, tokens: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> Logits:
        """One token of one row, run as two rows (the other a throw-away next to it).

        ONNX Runtime's int8 matmul takes a different kernel for a single row than
        for several; the last-bit difference flips an occasional activation
        rounding, and a row's logits then differ from the same row decoded in a
        batch. Two rows always take the batched kernel, so a sequence decodes the
        same alone as in a k-batch. The other row's key and value are written one
        cell past its valid length, where nothing reads them.
        """
        other = slot + 1 if slot + 1 < self.kv.n_slots else slot - 1
        owner = self.kv.owner[other]
        other_len = self.kv.length(owner) if owner is not None else 0
        pair = np.array([[int(tokens[0, 0])], [0]], dtype=np.int64)
        lens = np.array([int(lengths[0]), other_len], dtype=np.int64)
        if other < slot:
            pair, lens = pair[::-1].copy(), lens[::-1].copy()
        out = self._run_rows(min(slot, other), pair, lens)
        return out[:1] if other > slot else out[1:]

    def _check_budget(self, new_cells: int) -> None:
        if self.book.used + new_cells > self.n_cells:
            raise KVCacheFull(
                f"no KV room for {new_cells} more tokens ({self.book.used} of {self.n_cells} cells in use)"
            )

    def _note_peak(self) -> None:
        self._peak_cells = max(self._peak_cells, self.kv.cells_used())

    # -- DecodeSession -----------------------------------------------------------
    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> Logits:
        check_prompt(tokens, self.n_cells)
        ids = list(seq_ids)
        if not ids or len(ids) > self.n_seq_max:
            raise UsageError(f"prefill needs 1 to {self.n_seq_max} sequence ids, got {len(ids)}")
        first = ids[0]
        for s in ids:
            self.kv.attach(s)
        slot = self.kv.slot_of[first]
        toks = np.asarray(tokens, dtype=np.int64)
        row: Logits | None = None
        for start in range(0, len(toks), PREFILL_CHUNK):
            chunk = toks[start : start + PREFILL_CHUNK][None, :]
            row = self._run(slot, chunk, np.array([start], dtype=np.int64))[0]
            self.kv.advance(first, chunk.shape[1])
        self.kv.fill_from(first, ids)
        self.book.shared_prompt(len(toks), ids)
        self._note_peak()
        assert row is not None
        return row

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        if not feeds:
            raise UsageError("decode needs at least one feed")
        seqs = [seq for seq, _ in feeds]
        if len(set(seqs)) != len(seqs):
            raise UsageError("a decode may feed each sequence once")
        for seq, toks in feeds:
            if not toks:
                raise UsageError(f"empty feed for sequence {seq}")
        self._check_budget(sum(len(t) for _, t in feeds))
        for seq in seqs:
            if not self.kv.holds(seq):  # a new sequence starts at position 0, as in llama.cpp
                if not 0 <= seq < self.n_seq_max:
                    raise UsageError(f"sequence id {seq} is outside 0..{self.n_seq_max - 1}")
                self.kv.attach(seq)
        if all(len(t) == 1 for _, t in feeds):
            start, order = self.kv.window(seqs)
            n = len(feeds)
            tokens = np.empty((n, 1), dtype=np.int64)
            rows = np.arange(n) if order is None else order
            lengths = np.empty(n, dtype=np.int64)
            for i, (seq, toks) in enumerate(feeds):
                tokens[rows[i], 0] = toks[0]
                lengths[rows[i]] = self.kv.length(seq)
            out = self._run(start, tokens, lengths)
            result = out if order is None else out[order]
        else:
            parts = []
            for seq, toks in feeds:
                slot = self.kv.slot_of[seq]
                arr = np.asarray(toks, dtype=np.int64)[None, :]
                parts.append(
                    np.array(
                        self._run(slot, arr, np.array([self.kv.length(seq)], dtype=np.int64))[0]
                    )
                )
            result = np.stack(parts)
        for seq, toks in feeds:
            self.kv.advance(seq, len(toks))
            self.book.append(seq, len(toks))
        self._note_peak()
        return result

    def decode_all(self, seq_id: int, tokens: Sequence[int]) -> Logits:
        # the exported graph gives the last position's logits only: one token a run
        return np.stack([np.array(self.decode([(seq_id, [t])])[0]) for t in tokens])

    def remove(self, seq_id: int) -> None:
        self.kv.detach(seq_id)
        self.book.remove(seq_id)

    def retains(self, seq_id: int) -> bool:
        return False  # a removed row is free at once

    probes_in_place = False  # a fork copies a row cheaply here

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        raise UsageError("ONNX sessions probe on forked rows")

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        if not self.kv.holds(src):
            raise UsageError(f"cannot fork sequence {src}: it holds no KV")
        if self.kv.holds(dst):
            self.remove(dst)
        self.kv.attach(dst)
        self.kv.copy_row(src, dst, n_tokens)
        self.book.fork(src, dst, n_tokens)
        self._note_peak()

    def cells_used(self) -> int:
        return self.kv.cells_used()

    def kv_bytes_used(self) -> int:
        return int(self.kv.cells_used() * self._bytes_per_cell)

    def kv_bytes_peak(self) -> int:
        return int(self._peak_cells * self._bytes_per_cell)

    def kv_bytes_allocated(self) -> int:
        return self.kv.bytes_allocated()

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        self._abort = check

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        self.kv = KVRows(self.kv.n_layer, self.kv.n_kv_head, self.kv.head_dim, 0, self.kv.max_cells)
