"""The thread-count rule applied to a recorded CPU description (pure).

It is ``devices.cpu.threads_for`` (count the cores that are free, cap by
physical cores and the cgroup quota) over the right set of cores:

* on a hybrid CPU (big.LITTLE boards, Intel P+E, Apple P+E) only the big cores
  count, and the cap is the number of physical big cores: llama.cpp's threads
  wait for each other every layer, so one thread on a slow core sets the pace
  of all of them;
* cores this process may not run on (affinity) do not count;
* a reading without load figures (``busy_percent == ()``) counts every core as free.
"""

from __future__ import annotations

from edgescale.devices.cpu import CpuLoad, threads_for
from edgescale.devices.facts import CpuInfo


def candidate_cpus(cpu: CpuInfo) -> tuple[int, ...]:
    """Logical CPU ids llama.cpp threads should run on."""
    ids = cpu.allowed or tuple(range(cpu.logical_cores))
    if cpu.performance_cpus:
        perf = set(cpu.performance_cpus)
        ids = tuple(i for i in ids if i in perf) or ids
    return ids


def choose_threads(cpu: CpuInfo) -> int:
    """Threads for llama.cpp on this CPU given its recorded load (>= 1)."""
    ids = candidate_cpus(cpu)
    busy = cpu.busy_percent
    load_busy = tuple(busy[i] if i < len(busy) else 0.0 for i in ids)
    cap = cpu.performance_cores if cpu.performance_cores > 0 else cpu.physical_cores
    return threads_for(CpuLoad(ids, load_busy, max(1, cap), cpu.quota_cores))
