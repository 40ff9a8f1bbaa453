"""CPU facts and the default thread count.

llama.cpp's threads spin-wait on each other every layer: one thread stuck
behind another process on a busy core stalls them all. Measured on this
2-core box with another process busy on one core: 2 threads decoded at
2.8 tok/s, 1 thread at 95 tok/s. So the default is the number of cores that
are actually free right now, not the number that exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUSY_THRESHOLD = 50.0  # percent: a core busier than this over the sample is taken


@dataclass(frozen=True)
class CpuLoad:
    allowed: tuple[int, ...]  # logical CPU ids this process may run on
    busy_percent: tuple[float, ...]  # per allowed CPU, over the sample window
    physical_cores: int
    quota_cores: float | None  # cgroup CPU quota in cores, if any


def allowed_cpus() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return tuple(range(os.cpu_count() or 1))


def cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota from cgroup v2 ``cpu.max`` ("max 100000" means none)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(float(quota) / float(period), 0.0)
    except (ValueError, ZeroDivisionError):
        return None


def measure_load(window_s: float = 0.1) -> CpuLoad:
    import psutil

    allowed = allowed_cpus()
    per_cpu = psutil.cpu_percent(interval=window_s, percpu=True)
    busy = tuple(float(per_cpu[i]) if i < len(per_cpu) else 0.0 for i in allowed)
    physical = psutil.cpu_count(logical=False) or len(allowed)
    return CpuLoad(allowed, busy, int(physical), cgroup_quota_cores())


def threads_for(load: CpuLoad) -> int:
    """Threads to use given a load reading: free cores, capped by physical cores and quota."""
    free = sum(1 for b in load.busy_percent if b < BUSY_THRESHOLD)
    n = min(free, load.physical_cores, len(load.allowed))
    if load.quota_cores is not None:
        n = min(n, int(load.quota_cores))
    return max(1, n)


def default_threads() -> int:
    """EDGESCALE_THREADS if set, else the number of cores free right now (>= 1)."""
    env = os.environ.get("EDGESCALE_THREADS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return threads_for(measure_load())


def clamp_threads(n_threads: int, allowed: int | None = None) -> tuple[int, str | None]:
    """At most one thread per logical CPU this process may use: more only spin against
    each other (measured: 512 threads on 2 cores took 15 s for 8 tokens, 2 threads 0.2 s).
    Returns the count to use and a one-line notice when it was lowered."""
    cap = allowed if allowed is not None else len(allowed_cpus())
    if n_threads <= cap:
        return max(1, n_threads), None
    return cap, f"--threads {n_threads} is more than the {cap} CPU(s) this process may use: using {cap}"
