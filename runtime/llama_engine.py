"""The llama.cpp backend: one model; decode sessions over a unified KV cache
(``runtime.llama_session``) or one KV stream per sequence (``runtime.llama_streams``).

All C calls go through ``runtime._llama_ffi``; the sessions only arrange them:
prefill the prompt once, then decode the live sequences together, one token each per step.
"""

from __future__ import annotations

from pathlib import Path

from edgescale.errors import UsageError
from edgescale.models.info import ModelInfo, read_model_info
from edgescale.runtime import _llama_ffi as ffi
from edgescale.runtime.chat import ChatText
from edgescale.runtime.constraints import Vocab, llama_vocab
from edgescale.runtime.engine import MemoryLayout, check_session_shape
from edgescale.runtime.kv_types import F16, KvType
from edgescale.runtime.llama_session import LlamaSession
from edgescale.runtime.llama_streams import StreamSession
from edgescale.runtime.memory import llama_compute_bytes_per_token, mapped_file_rss, process_rss

KV_TYPE = "f16"  # llama.cpp's default cache type, the one sessions use
LLAMA_CELL_PAD = 256  # llama.cpp rounds a context up to a multiple of 256 cells


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
        compute = llama_compute_bytes_per_token(info)
        self.kv_layouts = {
            "unified": MemoryLayout(kv_type=KV_TYPE, prompt_per_sequence=False, cell_pad=LLAMA_CELL_PAD,
                                    compute_per_token=compute, name="unified"),
            "streams": MemoryLayout(kv_type=KV_TYPE, prompt_per_sequence=True, cell_pad=LLAMA_CELL_PAD,
                                    streams=True, compute_per_token=compute, name="streams"),
            # streams decoded so that a sequence's logits do not depend on the others (StreamSession)
            "exact": MemoryLayout(kv_type=KV_TYPE, prompt_per_sequence=True, cell_pad=LLAMA_CELL_PAD,
                                  streams=True, compute_per_token=compute, name="exact"),
        }
        self.memory_layout = self.kv_layouts["unified"]
        # Process memory besides the weights, before any context exists: the
        # planner's fixed cost (runtime.memory.memory_model).
        self.baseline_anon_bytes = process_rss() - mapped_file_rss(path)
        self.vocab = self.model
        self._vocab: Vocab | None = None  # for constrained decoding, built when first asked for
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

    def kv_type_refusal(self, kv: KvType) -> str | None:
        """Why this engine cannot keep its cache in ``kv`` (None: it can). Quantized values
        are read only by llama.cpp's flash-attention kernel, which sessions then turn on."""
        if kv.quantized_v and self.flash_attn is False:
            return (f"a KV cache with {kv.v} values needs llama.cpp's flash attention, which this engine "
                    "turned off; quantize only the keys (e.g. q8_0/f16)")
        return None

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int, kv_layout: str | None = None,
                kv_type: KvType | None = None) -> LlamaSession:
        """A context of ``n_cells`` cells for ``n_seqs`` sequences: one unified cache, or
        (``kv_layout="streams"``) ``n_seqs`` streams of ``n_cells / n_seqs`` cells each; its
        keys and values in ``kv_type`` (None: f16)."""
        layout = self.kv_layouts.get(kv_layout or self.memory_layout.name)
        if layout is None:
            raise UsageError(f"unknown KV layout {kv_layout!r}; choose one of: {', '.join(self.kv_layouts)}")
        kv = kv_type or F16
        refusal = self.kv_type_refusal(kv)
        if refusal is not None:
            raise UsageError(refusal)
        check_session_shape(self.info, n_seqs, n_cells)
        exact = layout.name == "exact"
        if n_seqs + exact > self.max_sequences:
            raise UsageError(f"{n_seqs} sequences exceed llama.cpp's limit of {self.max_sequences - exact}")
        if layout.streams:
            # llama.cpp gives each stream n_ctx / n_seq_max cells, rounded up to LLAMA_CELL_PAD
            stream = layout.padded(-(-n_cells // n_seqs))
            n_seqs += exact  # exact: one stream more, never used (see StreamSession)
            n_ctx = n_seqs * stream
        else:
            # llama.cpp cuts n_batch to n_ctx before it pads n_ctx to LLAMA_CELL_PAD, and every decode
            # reserves an output row per sequence within n_batch: a context of fewer cells than
            # sequences aborts the process. Ask for the padded size it allocates anyway.
            n_ctx = layout.padded(max(n_cells, n_seqs))
        params = ffi.ContextParams(
            n_ctx=n_ctx,
            n_batch=max(n_seqs, min(int(max_batch), n_ctx)),
            n_seq_max=n_seqs,
            n_threads=self.n_threads,
            type_k=kv.k,
            type_v=kv.v,
            flash_attn=True if kv.quantized_v else self.flash_attn,
            kv_unified=not layout.streams,
        )
        ctx = self._ctx
        self._ctx = None
        if ctx is not None and ctx.params != params:
            ctx.close()
            ctx = None
        if ctx is None:
            ctx = ffi.Context(self.model, params)
        per_cell = self.info.kv_bytes_per_cell(params.type_k, params.type_v)
        if layout.streams:
            return StreamSession(ctx, kv_bytes_per_cell=per_cell, release=self._release, exact=exact)
        return LlamaSession(ctx, kv_bytes_per_cell=per_cell, release=self._release)

    def _release(self, ctx: ffi.Context) -> None:
        if self._ctx is not None and self._ctx is not ctx:
            self._ctx.close()
        self._ctx = ctx

    def weights_bytes(self) -> int:
        return self.model.size_bytes()

    def constraint_vocab(self) -> Vocab:
        if self._vocab is None:
            eog = [t for t in range(self.info.n_vocab) if self.is_eog(t)]
            self._vocab = llama_vocab(self.model.vocab, self.info.n_vocab, eog)
        return self._vocab

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
