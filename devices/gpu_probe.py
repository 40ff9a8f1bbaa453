"""Find the GPUs llama.cpp could use: NVIDIA through ``nvidia-smi``, Apple silicon's Metal GPU.

NVIDIA: ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits``
(MiB), run with a short timeout when the binary exists; any failure means no
NVIDIA GPUs (a broken driver must not break ``describe``).

Apple silicon shares RAM between CPU and GPU. Metal lets one process keep
about ``recommendedMaxWorkingSetSize`` bytes resident on the GPU, which Apple
sets to roughly two thirds of RAM on small machines and three quarters on
large ones (llama.cpp logs the figure at start-up: e.g. 10.9 GB of 16 GB).
Rule used here, without a Metal call: ``total = RAM x 2/3`` up to 36 GiB of
RAM, ``RAM x 3/4`` above; ``free = min(available RAM, total)``.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable, Sequence

from edgescale.devices.facts import GpuInfo

MiB = 1 << 20
GiB = 1 << 30
NVIDIA_SMI_TIMEOUT_S = 3.0
NVIDIA_SMI_ARGS: tuple[str, ...] = (
    "--query-gpu=name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
)
APPLE_LARGE_RAM = 36 * GiB  # above this, Metal's working set is ~3/4 of RAM instead of ~2/3

Runner = Callable[[Sequence[str]], str | None]


def parse_nvidia_smi(text: str) -> tuple[GpuInfo, ...]:
    """CSV lines "name, total MiB, free MiB" -> GpuInfo; lines that do not parse are skipped."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        parts = line.rsplit(",", 2)  # a GPU name could contain a comma; the numbers cannot
        if len(parts) != 3:
            continue
        name, total, free = (p.strip() for p in parts)
        try:
            total_b, free_b = int(float(total) * MiB), int(float(free) * MiB)
        except ValueError:  # "[N/A]" on some boards
            continue
        if not name or total_b <= 0:
            continue
        free_b = max(0, min(free_b, total_b))
        gpus.append(GpuInfo("nvidia", name, total_b, free_b, "cuda", index=len(gpus)))
    return tuple(gpus)


def run_nvidia_smi(args: Sequence[str]) -> str | None:
    """stdout of nvidia-smi, or None when it is absent, fails or hangs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpus(run: Runner = run_nvidia_smi) -> tuple[GpuInfo, ...]:
    out = run(NVIDIA_SMI_ARGS)
    return parse_nvidia_smi(out) if out else ()


def metal_working_set(ram_total: int) -> int:
    """Bytes Metal lets a process keep on the GPU (see the module docstring for the rule)."""
    share = 3 / 4 if ram_total > APPLE_LARGE_RAM else 2 / 3
    return int(ram_total * share)


def apple_gpu(name: str, ram_total: int, ram_available: int) -> GpuInfo:
    total = metal_working_set(ram_total)
    return GpuInfo("apple", name, total, max(0, min(ram_available, total)), "metal")
