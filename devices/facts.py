"""What a machine is: CPU, RAM, GPUs and inference backends, as plain frozen data.

These records are made by :func:`edgescale.devices.hardware.describe` on the
machine itself, or read back from JSON (:func:`from_dict`): recorded
descriptions of other machines are test fixtures for the placement rules.
Sizes are bytes; ``busy_percent`` is indexed by logical CPU id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from edgescale.errors import UsageError

SCHEMA = 1


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "AMD EPYC", "Apple M2", "Cortex-A72"
    arch: str  # "x86_64", "arm64" (macOS), "aarch64" (Linux), "armv7l"
    physical_cores: int
    logical_cores: int
    busy_percent: tuple[float, ...]  # per logical CPU id over a short window; () = not measured
    features: tuple[str, ...]  # normalised: avx avx2 avx512f fma f16c neon dotprod i8mm sve ...
    threads_default: int  # the free-core rule applied to this reading (devices.threads)
    allowed: tuple[int, ...] = ()  # logical CPU ids this process may use; () = all
    quota_cores: float | None = None  # cgroup CPU quota in cores
    performance_cpus: tuple[int, ...] = ()  # logical ids of big/P cores on a hybrid CPU; () = alike
    performance_cores: int = 0  # physical big/P cores on a hybrid CPU; 0 = all alike

    def has(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # "nvidia", "apple"
    name: str
    total_bytes: int  # for Apple: the recommended Metal working set, not all of RAM
    free_bytes: int
    backend: str  # "cuda", "metal"
    index: int = 0  # device ordinal within its backend (cuda:<index>)


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "llama.cpp", "onnxruntime"
    version: str
    installed: bool  # importable and its native library loads
    gpu_offload: bool
    providers: tuple[str, ...]  # ORT execution providers; llama.cpp: ggml backends ("CUDA", "CPU")
    note: str = ""  # why an installed library does not load ("SIGILL (illegal instruction)")


@dataclass(frozen=True)
class DeviceInfo:
    os: str  # platform.system(): "Linux", "Darwin", "Windows"
    cpu: CpuInfo
    ram_total: int  # bytes (the cgroup limit when one is lower than the machine's RAM)
    ram_available: int
    gpus: tuple[GpuInfo, ...]
    backends: tuple[BackendInfo, ...]
    os_version: str = ""

    def backend(self, name: str) -> BackendInfo | None:
        return next((b for b in self.backends if b.name == name), None)


def to_dict(info: DeviceInfo) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    out = asdict(info)
    out["schema"] = SCHEMA
    return out


def _build(cls: type, data: Mapping[str, Any], what: str) -> Any:
    if not isinstance(data, Mapping):
        raise UsageError(f"device description: {what} must be an object")
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            continue  # written by a newer version: ignore
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"device description: bad {what}: {exc}") from None


def from_dict(data: Mapping[str, Any]) -> DeviceInfo:
    """Inverse of :func:`to_dict`; unknown keys are ignored, missing ones raise UsageError."""
    if not isinstance(data, Mapping):
        raise UsageError("device description must be an object")
    schema = data.get("schema", SCHEMA)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise UsageError(
            f"device description schema {schema!r} is newer than this edgescale reads ({SCHEMA})"
        )
    body = dict(data)
    body.pop("schema", None)
    raw_cpu = body.get("cpu")
    if not isinstance(raw_cpu, Mapping):
        raise UsageError("device description: cpu must be an object")
    cpu = dict(raw_cpu)
    try:
        cpu["busy_percent"] = [float(b) for b in cpu.get("busy_percent") or []]
    except (TypeError, ValueError):
        raise UsageError("device description: cpu.busy_percent must be numbers") from None
    body["cpu"] = _build(CpuInfo, cpu, "cpu")
    body["gpus"] = [_build(GpuInfo, g, "gpu") for g in body.get("gpus", [])]
    body["backends"] = [_build(BackendInfo, b, "backend") for b in body.get("backends", [])]
    return _build(DeviceInfo, body, "device")


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; binary units, one decimal from KiB up."""
    value = float(n)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"
