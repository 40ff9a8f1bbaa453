"""``--backend auto``: llama.cpp or ONNX Runtime, whichever this device's measured profiles
say is faster for the batch widths the work will run at.

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
from dataclasses import dataclass
from pathlib import Path

from edgescale.models.catalog import cache_dir, resolve_model


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
