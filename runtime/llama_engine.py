"""The llama.cpp backend: one model, decode sessions over a unified KV cache.

All C calls go through ``runtime._llama_ffi``; this module only arranges them:
prefill the prompt once with every sequence id on its tokens, then decode the
live sequences together, one token each per step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgescale.errors import KVCacheFull, UsageError
from edgescale.models.info import ModelInfo, read_model_info
from edgescale.runtime import _llama_ffi as ffi
from edgescale.runtime.chat import ChatText
from edgescale.runtime.engine import CellBook, Feed, Logits, MemoryLayout, check_prompt, check_session_shape
from edgescale.runtime.memory import llama_compute_bytes_per_token, mapped_file_rss, process_rss

KV_TYPE = "f16"  # llama.cpp's default cache type, the one sessions use
LLAMA_CELL_PAD = 256  # llama.cpp rounds a context up to a multiple of 256 cells

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

    def __init__(self, engine: "LlamaCppEngine", ctx: ffi.Context) -> None:
        self._engine = engine
        self.ctx = ctx
        self.n_seq_max = ctx.params.n_seq_max
        self.n_cells = ctx.n_ctx
        self.book = CellBook()
        self.decode_seconds = 0.0  # wall time inside llama_decode (benches read it)
        self._parked: dict[int, int] = {}  # ended sequence -> first cell only it held; llama.cpp still has them
        self.reclaims = 0  # decodes that needed the parked cells back
        self._batch = ffi.Batch(ctx.n_batch, ctx.params.n_seq_max)
        self._kv_per_cell = engine.info.kv_bytes_per_cell(ctx.params.type_k, ctx.params.type_v)

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

    def _copy_rows(self, group: Sequence[tuple[int, Sequence[int], bool]]) -> list[np.ndarray]:
        out = self._decode_batch(group)
        return [np.array(row) for row in out]

    def _decode_batch(self, pieces: Sequence[tuple[int, Sequence[int], bool]]) -> Logits:
        """Decode pieces (seq, tokens, wants_logits) in one llama_decode; return the wanted rows."""
        batch, book = self._batch, self.book
        for seq, _, _ in pieces:
            if self._parked.pop(seq, None) is not None:  # an ended sequence's id in use again
                self.ctx.seq_rm(seq)
        batch.clear()
        n_out = 0
        added: dict[int, int] = {}
        for seq, toks, want in pieces:
            pos = book.position(seq) + added.get(seq, 0)
            last = len(toks) - 1
            for j, tok in enumerate(toks):
                out = want and j == last
                batch.add(tok, pos + j, (seq,), out)
                n_out += out
            added[seq] = added.get(seq, 0) + len(toks)
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
        self._engine._release(self.ctx)


class LlamaCppEngine(ChatText):
    """A GGUF model loaded through llama.cpp."""

    backend_name = "llama.cpp"

    def __init__(
        self,
        path: Path,
        info: ModelInfo,
        *,
        n_threads: int,
        n_gpu_layers: int = 0,
        flash_attn: bool | None = None,
    ) -> None:
        self.path = path
        self.info = info
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.flash_attn = flash_attn  # None: llama.cpp's "auto"
        self.model = ffi.Model(path, n_gpu_layers=n_gpu_layers)
        self._ctx: ffi.Context | None = None  # one idle context kept for reuse
        self.memory_layout = MemoryLayout(
            kv_type=KV_TYPE, prompt_per_sequence=False, cell_pad=LLAMA_CELL_PAD,
            compute_per_token=llama_compute_bytes_per_token(info),
        )
        # Process memory besides the weights, before any context exists: the
        # planner's fixed cost (runtime.memory.memory_model).
        self.baseline_anon_bytes = process_rss() - mapped_file_rss(path)
        self.vocab = self.model
        self.bos_text = self.model.token_text(info.bos_token_id) if info.bos_token_id is not None else ""
        self.eos_text = self.model.token_text(info.eos_token_id) if info.eos_token_id is not None else ""

    @classmethod
    def load(
        cls, path: str | Path, *, n_threads: int, n_gpu_layers: int = 0, flash_attn: bool | None = None
    ) -> "LlamaCppEngine":
        """Validate the GGUF (header and sizes) before llama.cpp sees it, then load it.
        ``flash_attn`` forces llama.cpp's flash-attention kernel on or off (None: its
        "auto", which turns it on for the CPU). (``edgescale.loader`` also checks, once per
        build, that llama.cpp runs on this CPU before it loads anything.)"""
        p = Path(path)
        return cls(p, read_model_info(p), n_threads=n_threads, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn)

    @property
    def backend_version(self) -> str:
        return ffi.backend().version

    @property
    def max_sequences(self) -> int:
        """Most sequences one context may hold (llama.cpp's limit)."""
        return ffi.backend().max_parallel_sequences()

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int) -> LlamaSession:
        check_session_shape(self.info, n_seqs, n_cells)
        if n_seqs > self.max_sequences:
            raise UsageError(f"{n_seqs} sequences exceed llama.cpp's limit of {self.max_sequences}")
        # llama.cpp cuts n_batch to n_ctx before it pads n_ctx to LLAMA_CELL_PAD, and every decode
        # reserves an output row per sequence within n_batch: a context of fewer cells than
        # sequences aborts the process. Ask for the padded size it allocates anyway.
        n_ctx = -(-max(n_cells, n_seqs) // LLAMA_CELL_PAD) * LLAMA_CELL_PAD
        params = ffi.ContextParams(
            n_ctx=n_ctx,
            n_batch=max(n_seqs, min(int(max_batch), n_ctx)),
            n_seq_max=n_seqs,
            n_threads=self.n_threads,
            flash_attn=self.flash_attn,
        )
        ctx = self._ctx
        self._ctx = None
        if ctx is not None and ctx.params != params:
            ctx.close()
            ctx = None
        if ctx is None:
            ctx = ffi.Context(self.model, params)
        return LlamaSession(self, ctx)

    @property
    def holds_idle_context(self) -> bool:
        """Whether a finished session's context is kept for the next query of its shape."""
        return self._ctx is not None

    def _release(self, ctx: ffi.Context) -> None:
        if self._ctx is not None and self._ctx is not ctx:
            self._ctx.close()
        self._ctx = ctx

    def weights_bytes(self) -> int:
        return self.model.size_bytes()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self.model.close()

    def __enter__(self) -> "LlamaCppEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, ...)."""
    return ffi.backend().supports_gpu_offload()
