"""Describe this machine: CPU, RAM, GPUs and inference backends (:func:`describe`).

The records (:class:`DeviceInfo` and its parts) live in ``devices.facts`` and
are re-exported here; ``to_dict``/``from_dict`` turn them into JSON and back,
which is how descriptions of other machines are kept as test fixtures.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

from edgescale.devices.backend_probe import installed_backends
from edgescale.devices.cpu import allowed_cpus, cgroup_quota_cores
from edgescale.devices.cpu_probe import read_cpu
from edgescale.devices.facts import BackendInfo, CpuInfo, DeviceInfo, GpuInfo, from_dict, to_dict
from edgescale.devices.gpu_probe import apple_gpu, nvidia_gpus
from edgescale.devices.threads import choose_threads

__all__ = [
    "BackendInfo",
    "CpuInfo",
    "DeviceInfo",
    "GpuInfo",
    "cgroup_memory",
    "describe",
    "from_dict",
    "to_dict",
]

LOAD_WINDOW_S = 0.1


def cgroup_memory(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """(limit, in use) from cgroup v2 ``memory.max`` / ``memory.current``; None without a limit."""
    try:
        raw = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if raw == "max":
        return None
    try:
        return int(raw), current
    except ValueError:
        return None


def _ram() -> tuple[int, int]:
    """Total and available RAM, lowered to the cgroup's memory limit when there is one."""
    import psutil

    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limited = cgroup_memory()
    if limited is not None and limited[0] < total:
        limit, used = limited
        total, available = limit, max(0, min(available, limit - used))
    return total, available


def _os_version(system: str) -> str:
    if system == "Darwin":
        release = platform.mac_ver()[0]
        return f"macOS {release}" if release else platform.release()
    return platform.release()


def describe(*, measure_load: bool = True) -> DeviceInfo:
    """This machine now. ``measure_load`` samples per-core load for 0.1 s (the
    thread rule needs it); without it ``busy_percent`` is () and every core counts as free."""
    import psutil

    system = platform.system()
    facts = read_cpu(system)
    logical = int(psutil.cpu_count(logical=True) or 1)
    physical = int(psutil.cpu_count(logical=False) or logical)
    busy: tuple[float, ...] = ()
    if measure_load:
        per_cpu = psutil.cpu_percent(interval=LOAD_WINDOW_S, percpu=True)
        busy = tuple(float(b) for b in per_cpu)
        logical = max(logical, len(busy))
    allowed = allowed_cpus()
    cpu = CpuInfo(
        model=facts.model,
        arch=facts.arch,
        physical_cores=physical,
        logical_cores=logical,
        busy_percent=busy,
        features=facts.features,
        threads_default=1,
        allowed=() if allowed == tuple(range(logical)) else allowed,
        quota_cores=cgroup_quota_cores(),
        performance_cpus=facts.performance_cpus,
        performance_cores=facts.performance_cores,
    )
    cpu = replace(cpu, threads_default=choose_threads(cpu))
    ram_total, ram_available = _ram()
    backends = installed_backends()
    gpus = nvidia_gpus()
    if system == "Darwin" and cpu.arch == "arm64":
        # Listed whatever the llama.cpp build: BackendInfo.gpu_offload says whether it can be used.
        gpus = (*gpus, apple_gpu(f"{cpu.model} GPU", ram_total, ram_available))
    return DeviceInfo(
        os=system,
        cpu=cpu,
        ram_total=ram_total,
        ram_available=ram_available,
        gpus=gpus,
        backends=backends,
        os_version=_os_version(system),
    )
