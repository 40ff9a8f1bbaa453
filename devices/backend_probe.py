"""Which inference backends are installed, their versions and what they can offload to.

Both libraries are imported only when asked (they are heavy, and importing
llama-cpp-python loads its shared library). A library that is missing or fails
to load is reported with ``installed=False`` (and its version from the package
metadata when that is there) instead of raising.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata

from edgescale.devices.facts import BackendInfo

# ORT execution providers that run on a GPU / accelerator rather than the CPU.
ORT_GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "CoreMLExecutionProvider",
        "WebGpuExecutionProvider",
        "QNNExecutionProvider",
    }
)
_SYSINFO_BACKEND = re.compile(r"(?:^|\|)\s*([A-Za-z][A-Za-z0-9_]*)\s+:\s")


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


def parse_system_info_backends(text: str) -> tuple[str, ...]:
    """ggml backends named in ``llama_print_system_info()``.

    The string is "<backend> : <FLAG> = 1 | ... | <backend> : ...", e.g.
    "CUDA : ARCHS = 860 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 | ".
    """
    seen: list[str] = []
    for name in _SYSINFO_BACKEND.findall(text):
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def llama_cpp_backend() -> BackendInfo:
    """llama.cpp as a subprocess sees it (devices.buildcheck, cached per build and CPU):
    a build that dies on this CPU is reported, not allowed to take this process down."""
    version = _dist_version("llama_cpp_python", "llama-cpp-python")
    if importlib.util.find_spec("llama_cpp") is None:
        return BackendInfo("llama.cpp", version, False, False, ())
    from edgescale.devices.buildcheck import probe

    report = probe()
    if not report.ok:
        return BackendInfo("llama.cpp", version, False, False, (), note=report.crash or report.error)
    return BackendInfo(
        "llama.cpp",
        report.version or version,
        True,
        report.gpu_offload,
        parse_system_info_backends(report.system_info),
    )


def onnxruntime_backend() -> BackendInfo:
    version = _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon")
    if importlib.util.find_spec("onnxruntime") is None:
        return BackendInfo("onnxruntime", version, False, False, ())
    try:
        import onnxruntime as ort

        providers = tuple(str(p) for p in ort.get_available_providers())
        version = str(getattr(ort, "__version__", version))
    except (ImportError, OSError, AttributeError):
        return BackendInfo("onnxruntime", version, False, False, ())
    gpu = any(p in ORT_GPU_PROVIDERS for p in providers)
    return BackendInfo("onnxruntime", version, True, gpu, providers)


def installed_backends() -> tuple[BackendInfo, ...]:
    return (llama_cpp_backend(), onnxruntime_backend())
