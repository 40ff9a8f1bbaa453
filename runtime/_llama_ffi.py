"""The only module that touches llama.cpp's C API (through llama-cpp-python's ctypes bindings).

Thin, context-managed wrappers: :class:`Model`, :class:`Context`, :class:`Batch`.
``llama_decode`` return codes become typed errors here. Tested against
llama-cpp-python 0.3.36 (``llama_memory_*`` API, ``kv_unified`` context flag).
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from edgescale.errors import BackendUnavailable, DecodeAborted, DecodeError, KVCacheFull

log = logging.getLogger("edgescale.llama_cpp")

_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
_KV_SIZE_RE = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells")
_COMPUTE_RE = re.compile(r"compute buffer size = +([0-9.]+) MiB")
_OUTPUT_RE = re.compile(r"output buffer size = +([0-9.]+) MiB")
_DEBUG, _CONT = 4, 5


class _Backend:
    """llama.cpp loaded once per process: the bindings, backend init and a log sink.

    llama.cpp's log callback is process-wide, so this object is made once
    (``backend()``) and keeps the ctypes callback alive for the process.
    """

    def __init__(self) -> None:
        try:
            import llama_cpp  # noqa: F401  (imports the shared library)
            from llama_cpp import llama_cpp as lib
        except (ImportError, OSError) as exc:
            raise BackendUnavailable(
                f"llama-cpp-python is not usable ({exc}); install it: pip install 'llama-cpp-python>=0.3.16'"
            ) from None
        self.lib: ModuleType = lib
        self.version: str = getattr(llama_cpp, "__version__", "unknown")
        self.lines: deque[str] = deque(maxlen=200)  # recent non-debug lines
        self.report: dict[str, float] = {}  # buffer sizes from the last context creation
        self._partial = ""
        self._level = 0
        self._callback = lib.llama_log_callback(self._on_log)
        lib.llama_log_set(self._callback, ctypes.c_void_p(0))
        lib.llama_backend_init()

    def _on_log(self, level: int, text: bytes, user_data: Any) -> None:
        try:
            if level != _CONT:
                self._level = level
            self._partial += text.decode("utf-8", errors="replace")
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self._take_line(line)
        except Exception:  # never let an exception cross the C boundary
            self._partial = ""

    def _take_line(self, line: str) -> None:
        m = _KV_SIZE_RE.search(line)
        if m:  # models with sliding-window layers report two caches: add them up
            self.report["kv_mib"] = self.report.get("kv_mib", 0.0) + float(m.group(1))
            self.report["kv_cells"] = max(self.report.get("kv_cells", 0.0), float(m.group(2)))
        m = _COMPUTE_RE.search(line)
        if m:
            self.report["compute_mib"] = self.report.get("compute_mib", 0.0) + float(m.group(1))
        m = _OUTPUT_RE.search(line)
        if m:
            self.report["output_mib"] = float(m.group(1))
        if self._level != _DEBUG:
            self.lines.append(line)
            log.debug("%s", line)

    def system_info(self) -> str:
        raw = self.lib.llama_print_system_info()
        return raw.decode("utf-8", errors="replace") if raw else ""

    def supports_gpu_offload(self) -> bool:
        return bool(self.lib.llama_supports_gpu_offload())

    def max_parallel_sequences(self) -> int:
        return int(self.lib.llama_max_parallel_sequences())

    def devices(self) -> list[str]:
        """ggml's devices in this build, "NAME: description" ("CPU: AMD EPYC", "CUDA0: NVIDIA H200");
        empty when this llama-cpp-python does not expose ggml's device registry."""
        try:
            from llama_cpp._ctypes_extensions import load_shared_library

            ggml = load_shared_library("ggml", Path(str(self.lib.__file__)).parent / "lib")
            ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
            ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
            ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
            for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
                fn.argtypes = [ctypes.c_void_p]
                fn.restype = ctypes.c_char_p
        except (ImportError, OSError, AttributeError, RuntimeError):
            return []
        out = []
        for i in range(int(ggml.ggml_backend_dev_count())):
            dev = ggml.ggml_backend_dev_get(i)
            name = (ggml.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
            desc = (ggml.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace").strip()
            out.append(f"{name}: {desc}" if desc else name)
        return out


@lru_cache(maxsize=1)
def backend() -> _Backend:
    return _Backend()


class Model:
    """A loaded (memory-mapped) model and its vocabulary."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, use_mmap: bool = True) -> None:
        self._be = backend()
        lib = self._be.lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_mmap = use_mmap
        ptr = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not ptr:
            raise BackendUnavailable(f"{path}: llama.cpp could not load this model (unsupported architecture?)")
        self.ptr = ptr
        self.vocab = lib.llama_model_get_vocab(ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if self.ptr:
            self._be.lib.llama_model_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def size_bytes(self) -> int:
        return int(self._be.lib.llama_model_size(self.ptr))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        lib = self._be.lib
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (lib.llama_token * cap)()
        n = lib.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The token's text as bytes; control tokens render as empty."""
        piece = self._pieces.get(token)
        if piece is None:
            lib = self._be.lib
            n = lib.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = lib.llama_token_to_piece(self.vocab, token, big, -n, 0, False)
                piece = big.raw[:n]
            else:
                piece = self._piece_buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> str:
        raw = self._be.lib.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(self._be.lib.llama_vocab_is_eog(self.vocab, token))


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int
    n_batch: int
    n_seq_max: int
    n_threads: int
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool | None = None  # None: llama.cpp decides (on where the backend supports it)
    # one KV cache for all sequences (what the runtime uses), or one stream of n_ctx / n_seq_max
    # cells per sequence, attended to alone (bench/kv_layout.py measures the difference)
    kv_unified: bool = True


class Batch:
    """A ``llama_batch`` owned by Python, freed on close."""

    def __init__(self, capacity: int, n_seq_max: int) -> None:
        self._lib = backend().lib
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self.raw = self._lib.llama_batch_init(capacity, 0, n_seq_max)
        self.raw.n_tokens = 0

    def close(self) -> None:
        if self.capacity:
            self._lib.llama_batch_free(self.raw)
            self.capacity = 0

    def clear(self) -> None:
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids: Sequence[int], logits: bool) -> None:
        b = self.raw
        i = b.n_tokens
        if i >= self.capacity:
            raise DecodeError(f"batch capacity {self.capacity} exceeded")
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = len(seq_ids)
        for j, s in enumerate(seq_ids):
            b.seq_id[i][j] = s
        b.logits[i] = logits
        b.n_tokens = i + 1

    @property
    def n_tokens(self) -> int:
        return int(self.raw.n_tokens)


class Context:
    """A llama.cpp context: a KV cache shared by up to n_seq_max sequences (unified), or a
    stream of it per sequence (``kv_unified`` off)."""

    def __init__(self, model: Model, params: ContextParams) -> None:
        self._be = backend()
        lib = self._be.lib
        self.model = model
        cp = lib.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = params.n_batch
        cp.n_seq_max = params.n_seq_max
        cp.n_threads = params.n_threads
        cp.n_threads_batch = params.n_threads
        cp.kv_unified = params.kv_unified
        cp.type_k = _GGML_TYPES[params.type_k]
        cp.type_v = _GGML_TYPES[params.type_v]
        cp.flash_attn_type = {None: -1, False: 0, True: 1}[params.flash_attn]
        cp.no_perf = True
        self._abort_check: Callable[[], bool] | None = None
        self._logits_view: tuple[int, npt.NDArray[np.float32]] | None = None
        self._be.report.clear()
        self._abort_cb = lib.ggml_abort_callback(self._on_abort)
        self.ptr = lib.llama_init_from_model(model.ptr, cp)
        if not self.ptr:
            raise BackendUnavailable(
                f"llama.cpp could not create a context (n_ctx={params.n_ctx}, n_seq_max={params.n_seq_max}); "
                "out of memory?"
            )
        self.params = params
        self.n_ctx = int(lib.llama_n_ctx(self.ptr))
        self.n_batch = int(lib.llama_n_batch(self.ptr))
        self.mem = lib.llama_get_memory(self.ptr)
        # llama.cpp's own figures for what this context allocated (from its log).
        self.reported: dict[str, float] = dict(self._be.report)

    def _on_abort(self, data: Any) -> bool:
        check = self._abort_check
        try:
            return bool(check()) if check is not None else False
        except Exception:  # never let an exception cross the C boundary
            return False

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        """Ask llama.cpp to abort a running decode when ``check()`` turns true.

        ggml calls the callback once per graph node (hundreds per decode), and each
        call crosses into Python: that costs ~2 ms a step on a 135M model. So it is
        installed only while ``check`` is set (long prefills) and removed otherwise.
        """
        lib = self._be.lib
        self._abort_check = check
        cb = self._abort_cb if check is not None else lib.ggml_abort_callback()
        lib.llama_set_abort_callback(self.ptr, cb, None)

    def close(self) -> None:
        if self.ptr:
            self._be.lib.llama_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, batch: Batch) -> None:
        rc = int(self._be.lib.llama_decode(self.ptr, batch.raw))
        if rc == 0:
            return
        if rc == 1:
            raise KVCacheFull(f"no KV cache slot for a batch of {batch.n_tokens} tokens (context {self.n_ctx} cells)")
        if rc == 2:
            raise DecodeAborted("decode aborted")
        raise DecodeError(f"llama_decode failed with code {rc}")

    def logits(self, n_rows: int) -> npt.NDArray[np.float32]:
        """Logits of the last decode's output rows, in batch order (a view, valid until the next decode)."""
        ptr = self._be.lib.llama_get_logits(self.ptr)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value or 0
        view = self._logits_view
        if view is None or view[0] != addr or view[1].shape[0] < n_rows:
            rows = max(n_rows, self.params.n_seq_max)
            view = (addr, np.ctypeslib.as_array(ptr, shape=(rows, self.model.n_vocab)))
            self._logits_view = view
        return view[1][:n_rows]

    def seq_rm(self, seq_id: int, from_pos: int = -1) -> None:
        """Drop ``seq_id``'s cells (of positions ``from_pos`` on; -1: all of them)."""
        self._be.lib.llama_memory_seq_rm(self.mem, seq_id, from_pos, -1)

    @property
    def n_ctx_seq(self) -> int:
        """Cells one sequence may hold: all of them in a unified cache, its stream's otherwise."""
        return int(self._be.lib.llama_n_ctx_seq(self.ptr))

    def seq_cp(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        """``dst`` shares ``src``'s cells of positions [0, n_tokens) (None: all). Across streams
        (``kv_unified`` off) only whole streams copy, and the data is copied at the next decode."""
        self._be.lib.llama_memory_seq_cp(self.mem, src, dst, 0 if n_tokens is not None else -1,
                                         n_tokens if n_tokens is not None else -1)

    def seq_pos_max(self, seq_id: int) -> int:
        return int(self._be.lib.llama_memory_seq_pos_max(self.mem, seq_id))

    def clear(self) -> None:
        self._be.lib.llama_memory_clear(self.mem, True)


def quantize(src: Path, dst: Path, ftype: int, n_threads: int, *, allow_requantize: bool = False) -> int:
    """llama.cpp's own quantiser; returns its status code (0 = success).
    ``allow_requantize``: accept an already-quantised source (llama.cpp dequantises it first)."""
    lib = backend().lib
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    return int(lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))


def greedy_decode_check(path: Path, n_tokens: int, n_threads: int = 2) -> list[int]:
    """Load ``path`` on the CPU, read a short prompt in one batch and decode ``n_tokens``
    greedy tokens one at a time, on a worker thread as well as the main one (the paths a
    build crashes in when it uses instructions the CPU lacks). Returns the tokens."""
    threads = n_threads
    with Model(path) as model:
        prompt = model.tokenize("The capital of France is", add_special=True, parse_special=False)
        params = ContextParams(n_ctx=len(prompt) + n_tokens + 8, n_batch=max(32, len(prompt)), n_seq_max=1,
                               n_threads=threads)
        with Context(model, params) as ctx:
            batch = Batch(params.n_batch, 1)
            try:
                for i, tok in enumerate(prompt):
                    batch.add(tok, i, (0,), i == len(prompt) - 1)
                ctx.decode(batch)
                out = []
                for step in range(n_tokens):
                    out.append(int(np.argmax(ctx.logits(1)[0])))
                    batch.clear()
                    batch.add(out[-1], len(prompt) + step, (0,), True)
                    ctx.decode(batch)
                return out
            finally:
                batch.close()
