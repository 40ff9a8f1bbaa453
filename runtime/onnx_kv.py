"""The KV cache of an ONNX decoder session: one buffer of right-padded rows.

Layout: ``buf[layer, k|v, slot, kv_head, cell, head_dim]`` (float32). Each
sequence owns one *slot* (a row); its first ``length`` cells are valid and the
rest is padding. A batch is a contiguous run of slots, so each layer's past
and present tensors are plain views of the buffer that ONNX Runtime reads and
writes in place (``GroupQueryAttention`` appends each row's new keys at that
row's own length). The prompt is prefilled once and its row copied to every
sequence that shares it; a fork copies its parent's valid cells; removing a
sequence frees its slot at once. The cells a session holds are the sum of its
rows' lengths (a prompt shared by k rows counts k times: that is what this
layout stores).

When the sequences of one decode are not in adjacent slots, rows are moved
(only their valid cells are copied) to make them so; when a row outgrows the
buffer, the buffer is re-allocated larger (``np.zeros``: pages are touched only
when written).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgescale.errors import ContextOverflow, KVCacheFull

GROW_STEP = 64  # cell capacity is a multiple of this


def _round_up(n: int, step: int = GROW_STEP) -> int:
    return (n + step - 1) // step * step


class KVRows:
    """Slot bookkeeping and the KV buffer of one decode session."""

    def __init__(
        self, n_layer: int, n_kv_head: int, head_dim: int, n_slots: int, max_cells: int
    ) -> None:
        self.n_layer = n_layer
        self.n_kv_head = n_kv_head
        self.head_dim = head_dim
        self.n_slots = n_slots
        self.max_cells = max_cells  # longest row the model supports (its rotary table)
        self.cap = 0
        self.buf: npt.NDArray[np.float32] = np.zeros(
            (n_layer, 2, n_slots, n_kv_head, 0, head_dim), np.float32
        )
        self.lengths = np.zeros(n_slots, dtype=np.int64)
        self.owner: list[int | None] = [None] * n_slots
        self.slot_of: dict[int, int] = {}
        self.generation = 0  # bumped whenever ``buf`` is replaced (views must be rebuilt)
        self.rows_moved = 0  # rows copied to make a batch contiguous (diagnostics)

    # -- capacity ------------------------------------------------------------
    def ensure_capacity(self, cells: int) -> None:
        """Make every row able to hold ``cells`` cells."""
        if cells <= self.cap:
            return
        if cells > self.max_cells:
            raise ContextOverflow(
                f"a sequence of {cells} tokens exceeds the model's {self.max_cells} positions"
            )
        new_cap = min(self.max_cells, max(_round_up(cells), _round_up(self.cap + self.cap // 2)))
        new = np.zeros(self.buf.shape[:4] + (new_cap, self.head_dim), np.float32)
        if self.cap:
            used = int(self.lengths.max(initial=0))
            if used:
                new[:, :, :, :, :used] = self.buf[:, :, :, :, :used]
        self.buf = new
        self.cap = new_cap
        self.generation += 1

    # -- sequences -------------------------------------------------------------
    def holds(self, seq: int) -> bool:
        return seq in self.slot_of

    def length(self, seq: int) -> int:
        return int(self.lengths[self.slot_of[seq]])

    def attach(self, seq: int) -> int:
        """A free slot for ``seq``: after the highest held slot when possible (keeps
        batches adjacent)."""
        if seq in self.slot_of:
            raise KVCacheFull(f"sequence {seq} already holds a KV row")
        held = [s for s, o in enumerate(self.owner) if o is not None]
        after = (max(held) + 1) if held else 0
        free = [s for s in range(after, self.n_slots) if self.owner[s] is None]
        if not free:
            free = [s for s in range(self.n_slots) if self.owner[s] is None]
        if not free:
            raise KVCacheFull(f"all {self.n_slots} sequence slots are in use")
        slot = free[0]
        self.owner[slot] = seq
        self.slot_of[seq] = slot
        self.lengths[slot] = 0
        return slot

    def detach(self, seq: int) -> None:
        slot = self.slot_of.pop(seq, None)
        if slot is not None:
            self.owner[slot] = None
            self.lengths[slot] = 0

    def copy_row(self, src_seq: int, dst_seq: int, n_tokens: int | None = None) -> None:
        """``dst`` becomes a copy of ``src``'s first ``n_tokens`` cells (None: all valid cells)."""
        a, b = self.slot_of[src_seq], self.slot_of[dst_seq]
        n = int(self.lengths[a]) if n_tokens is None else min(int(n_tokens), int(self.lengths[a]))
        self.buf[:, :, b, :, :n] = self.buf[:, :, a, :, :n]
        self.lengths[b] = n

    def fill_from(self, src_seq: int, dst_seqs: Sequence[int]) -> None:
        """Copy ``src``'s row to every sequence in ``dst_seqs`` (the shared prompt)."""
        for d in dst_seqs:
            if d != src_seq:
                self.copy_row(src_seq, d)

    def advance(self, seq: int, n: int) -> None:
        self.lengths[self.slot_of[seq]] += n

    # -- batches ---------------------------------------------------------------
    def _move(self, a: int, b: int) -> None:
        """Swap the contents and owners of slots a and b (valid cells only)."""
        la, lb = int(self.lengths[a]), int(self.lengths[b])
        keep = self.buf[:, :, a, :, :la].copy() if la else None
        if lb:
            self.buf[:, :, a, :, :lb] = self.buf[:, :, b, :, :lb]
        if keep is not None:
            self.buf[:, :, b, :, :la] = keep
        self.lengths[a], self.lengths[b] = lb, la
        oa, ob = self.owner[a], self.owner[b]
        self.owner[a], self.owner[b] = ob, oa
        if ob is not None:
            self.slot_of[ob] = a
        if oa is not None:
            self.slot_of[oa] = b
        self.rows_moved += (la > 0) + (lb > 0)

    def window(self, seqs: Sequence[int]) -> tuple[int, npt.NDArray[np.intp] | None]:
        """Make ``seqs``' slots adjacent; return (first slot, order) where ``order[i]`` is
        the batch row of ``seqs[i]`` (None when the rows are already in ``seqs`` order)."""
        slots = [self.slot_of[s] for s in seqs]
        lo, n = min(slots), len(slots)
        if max(slots) - lo + 1 != n:
            wanted = set(seqs)
            # Move every sequence outside [0, n) into a slot of [0, n) no fed sequence holds.
            spots = [t for t in range(n) if self.owner[t] not in wanted]
            for s in seqs:
                if self.slot_of[s] >= n:
                    self._move(spots.pop(0), self.slot_of[s])
            slots = [self.slot_of[s] for s in seqs]
            lo = 0
        rows = np.asarray(slots, dtype=np.intp) - lo
        if np.array_equal(rows, np.arange(n)):
            return lo, None
        return lo, rows

    def views(
        self, start: int, stop: int
    ) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
        """Per layer (key, value) views of slots [start, stop): contiguous, shared with the buffer."""
        return [
            (self.buf[i, 0, start:stop], self.buf[i, 1, start:stop]) for i in range(self.n_layer)
        ]

    # -- accounting ------------------------------------------------------------
    def cells_used(self) -> int:
        return int(sum(int(self.lengths[s]) for s in self.slot_of.values()))

    def bytes_allocated(self) -> int:
        return int(self.buf.nbytes)
