"""Loading a model, above the runtime: the built-in backends with what runs before
llama.cpp is loaded (the build check, GPU placement), the thread count, and
``--backend auto``.

:func:`load_engine` is the one way every front end loads a model (``Runtime.load``,
``Runtime.open``, the quality report); :func:`default_backends` is the registry of the
built-in backends (``runtime.backends`` holds the registry type; tests register a
scripted engine on their own instance).

``--backend auto`` is llama.cpp or ONNX Runtime, whichever this device's measured
profiles say is faster for the batch widths the work will run at.

A GGUF model has an ONNX form when ``edgescale convert`` wrote one into edgescale's
cache (``onnx_dir_for``: ``~/.cache/edgescale/onnx/<model key>/``; ``edgescale
devices --calibrate --backend auto`` converts and measures both). The choice,
with its reason:

* no ONNX form, or onnxruntime not installed, or only one backend measured on this
  device: llama.cpp (the reason says what is missing);
* both measured: the backend with the lower step time per token at ``width`` (the
  sequences a step will carry: 1 for single queries, k x parallel queries for batch
  work), prefill speed breaking ties. On x86 CPUs ONNX Runtime decodes wide batches
  faster than llama.cpp and single sequences slower (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from edgescale.models.catalog import cache_dir, resolve_model
from edgescale.models.info import ModelInfo, read_model_info
from edgescale.runtime.backends import Backend, BackendRegistry, LoadRequest
from edgescale.runtime.engine import Engine


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "llama.cpp" or "onnx"
    model: Path  # what that backend loads: the GGUF, or its ONNX folder
    reason: str


def onnx_dir_for(gguf: Path) -> Path:
    """Where the ONNX form of a GGUF file is kept (made by ``edgescale convert --cache``)."""
    from edgescale.devices.profile import model_key

    return cache_dir() / "onnx" / model_key(gguf)


def has_onnx_form(gguf: Path) -> bool:
    d = onnx_dir_for(gguf)
    return (d / "edgescale_onnx.json").is_file()


def _step_per_token(profile: object, width: int) -> float:
    return float(profile.step_time(width)) / width  # type: ignore[attr-defined]


def choose_backend(model: str | Path | None, *, threads: int, width: int = 1) -> BackendChoice:
    """Pick the backend for ``model`` from the profiles cached on this device (no loading)."""
    from edgescale.devices.profile import cache_path, load_profile, model_key

    gguf = resolve_model(model)
    if importlib.util.find_spec("onnxruntime") is None:
        return BackendChoice("llama.cpp", gguf, "onnxruntime is not installed")
    if not has_onnx_form(gguf):
        return BackendChoice("llama.cpp", gguf, "no ONNX form of this model yet (`edgescale devices --calibrate "
                                                "--backend auto` converts and measures it)")
    onnx_dir = onnx_dir_for(gguf)
    onnx_file = next((f for f in onnx_dir.glob("*.onnx")), None)
    if onnx_file is None:
        return BackendChoice("llama.cpp", gguf, "the cached ONNX form has no model file")
    llama = load_profile(cache_path(model_key(gguf), "llama.cpp", threads, 0))
    onnx = load_profile(cache_path(model_key(onnx_file), "onnx", threads, 0))
    missing = [name for name, prof in (("llama.cpp", llama), ("onnx", onnx)) if prof is None]
    if missing:
        return BackendChoice("llama.cpp", gguf, f"no measured profile for {' and '.join(missing)} at {threads} "
                                                "threads (`edgescale devices --calibrate --backend auto`)")
    assert llama is not None and onnx is not None
    a, b = _step_per_token(llama, width), _step_per_token(onnx, width)
    if b < a:
        return BackendChoice("onnx", onnx_dir, f"at {width} sequence(s) a step, ONNX Runtime measured "
                                               f"{1 / b:.0f} tok/s here, llama.cpp {1 / a:.0f}")
    return BackendChoice("llama.cpp", gguf, f"at {width} sequence(s) a step, llama.cpp measured {1 / a:.0f} tok/s "
                                            f"here, ONNX Runtime {1 / b:.0f}")


def ensure_onnx_form(gguf: Path) -> Path:
    """The cached ONNX form of ``gguf``, converted now if missing (minutes for large models)."""
    from edgescale.quant.gguf_to_onnx import convert

    out = onnx_dir_for(gguf)
    if not has_onnx_form(gguf):
        convert(gguf, out, overwrite=True)
    return out


# -- the built-in backends -------------------------------------------------------------
def runnable_model(model: str | Path | None) -> Path:
    """The GGUF edgescale runs for a model reference: ``NAME:TYPE`` is a catalog model as a
    copy in another weight type (``smollm2-135m:q4_0``: llama.cpp repacks Q4_0 for this
    CPU's kernels and not the shipped Q4_1; docs/BENCHMARKS.md has what each costs), made
    once into the cache with llama.cpp's quantiser and reused; anything else as it
    resolves (a user's file is never swapped)."""
    from edgescale.models.catalog import copy_ref

    copy = copy_ref(model)
    if copy is None:
        return resolve_model(model)
    target = copy.path()
    if not target.is_file():
        from edgescale.devices.cpu import default_threads
        from edgescale.quant.quantize import ftype_of, quantize

        ftype_of(copy.qtype)  # a bad type is a one-line error before anything is written
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            quantize(copy.source(), tmp, copy.qtype, n_threads=default_threads(), overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _load_llama(request: LoadRequest) -> Engine:
    """A catalog name or GGUF path (``runnable_model``): validated, the build checked on this
    CPU (a build that dies here becomes an error, not a SIGILL; cached), GPU layers as many
    as fit."""
    from edgescale.devices.buildcheck import ensure_runs
    from edgescale.models.catalog import copy_ref
    from edgescale.runtime.llama_engine import LlamaCppEngine

    copy = copy_ref(request.model)
    ensure_runs(copy.source() if copy is not None else resolve_model(request.model))  # before llama.cpp loads
    path = runnable_model(request.model)
    info = read_model_info(path)
    layers = request.n_gpu_layers
    if layers is None:
        layers = _auto_gpu_layers(info)
    return LlamaCppEngine(path, info, n_threads=request.threads, n_gpu_layers=layers)


def _auto_gpu_layers(info: ModelInfo) -> int:
    """Layers to offload: 0 on a CPU-only llama.cpp build; otherwise as many as fit the
    free VRAM with a KV cache of 4096 cells (devices.placement decides)."""
    from edgescale.devices.hardware import describe
    from edgescale.devices.placement import place
    from edgescale.runtime.llama_engine import supports_gpu_offload

    if not supports_gpu_offload():
        return 0
    return place(describe(measure_load=False), info, kv_bytes=info.kv_bytes(4096)).n_gpu_layers


def _resolve_gguf(model: str | Path | None) -> Path:
    return resolve_model(model)


def _load_onnx(request: LoadRequest) -> Engine:
    from edgescale.runtime.onnx_engine import load_onnx

    return load_onnx(request)


def _resolve_onnx_dir(model: str | Path | None) -> Path:
    from edgescale.runtime.onnx_engine import resolve_model_dir

    return resolve_model_dir(model)


def _load_auto(request: LoadRequest) -> Engine:
    choice = choose_backend(request.model, threads=request.threads, width=request.width)
    return default_backends().load(choice.name, replace(request, model=choice.model))


def default_backends() -> BackendRegistry:
    """A registry of the built-in backends: llama.cpp (the default), ONNX Runtime, and auto
    (whichever of the two this device's measured profiles favour)."""
    return BackendRegistry([
        Backend("llama.cpp", _load_llama, _resolve_gguf, aliases=("llama_cpp", "llamacpp", "llama"),
                summary="GGUF models through llama.cpp (llama-cpp-python)",
                claims=lambda p: p.suffix.lower() == ".gguf"),
        Backend("onnx", _load_onnx, _resolve_onnx_dir, aliases=("onnxruntime", "ort"),
                summary="ONNX Runtime; a model directory made by `edgescale convert`",
                claims=lambda p: p.is_dir()),
        Backend("auto", _load_auto, _resolve_gguf,
                summary="llama.cpp or ONNX Runtime, from this device's measured profiles of both"),
    ])


@dataclass(frozen=True)
class LoadSpec:
    """What to load and how (picklable: Ray workers get one)."""

    model: str | None = None  # a catalog name or a path; None: the embedded default model
    backend: str = "llama.cpp"  # or onnx, or auto
    threads: int | None = None  # None: the cores free right now
    gpu_layers: int | None = None  # None: as many as fit
    width: int | None = None  # sequences a step will usually carry (backend auto picks for it); None: 1


def load_engine(spec: LoadSpec, *, registry: BackendRegistry | None = None,
                notify: Callable[[str], None] | None = None) -> tuple[Engine, BackendChoice | None]:
    """Resolve a model reference and load it on the named backend (``registry``: the
    built-in backends unless given). More threads than the machine has are cut to its
    core count (``notify`` hears why). ``backend="auto"``: the backend this device's
    measured profiles favour at ``spec.width`` sequences a step; the choice (which, and
    why) comes back with the engine."""
    from edgescale.devices.cpu import clamp_threads, default_threads

    n_threads, note = clamp_threads(default_threads() if spec.threads is None else spec.threads)
    if note is not None and notify is not None:
        notify(note)
    backends = registry if registry is not None else default_backends()
    width = spec.width or 1
    backend, model = spec.backend, spec.model
    choice = None
    if backends.canonical(backend) == "auto":
        choice = choose_backend(model, threads=n_threads, width=width)
        backend, model = choice.name, str(choice.model)
    engine = backends.load(backend, LoadRequest(model=model, threads=n_threads, n_gpu_layers=spec.gpu_layers,
                                                width=width))
    return engine, choice
