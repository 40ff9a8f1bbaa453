"""Process memory, measured: what the planner's memory model starts from.

The budget covers the whole process (what `ps` shows as RSS): the interpreter
and libraries, the memory-mapped weights (counted in full), llama.cpp's
compute buffers, the logits rows and the KV cache. ``fixed_bytes`` is
everything except the per-query context: the engine measures the process's
non-weight RSS right after loading the model, before any context exists, and
the file size is added. (Measuring later would count an idle context's
buffers, only partly resident, and be wrong either way.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgescale.models.info import ModelInfo
from edgescale.runtime.engine import CellCount, Engine
from edgescale.runtime.kv_types import KvType


def llama_compute_bytes_per_token(info: ModelInfo) -> int:
    """llama.cpp's compute buffer per token of the batch it is given: f32 logits for every
    token plus a few activations, ``4 x (n_vocab + 4 x n_embd)``. (llama-cpp-python
    0.3.36 reported 98.25 MiB for SmolLM2-135M at n_batch 512; this gives 100 MiB.)
    It assumes flash attention (llama.cpp's default "auto" on the CPU), which never
    materialises the n_head x n_cells score matrix."""
    return 4 * (info.n_vocab + 4 * info.n_embd)


@dataclass(frozen=True)
class MemoryModel(CellCount):
    """Bytes the process needs at a given allocation (see the module docstring)."""

    fixed_bytes: int
    kv_bytes_per_cell: float
    compute_per_token: int  # scratch of one decode call: this x n_batch ...
    logits_bytes_per_seq: int  # n_vocab x 4
    prompt_per_sequence: bool = False  # KV layout: False = one shared prompt (llama.cpp unified cache)
    cell_pad: int = 256  # the backend rounds the cache up to a multiple of this many cells
    compute_per_token_sq: int = 0  # ... + this x n_batch^2
    streams: bool = False  # KV layout: one stream per sequence id (prompt copied into each)

    def peak(self, *, n_seqs: int, n_cells: int, n_batch: int) -> int:
        return int(
            self.fixed_bytes
            + self.compute_per_token * n_batch
            + self.compute_per_token_sq * n_batch * n_batch
            + self.logits_bytes_per_seq * n_seqs
            + self.kv_bytes_per_cell * n_cells
        )


def peak_rss_bytes() -> int:
    """The process's peak RSS so far.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's own
    address space. (getrusage's ru_maxrss is not used there: at exec the kernel
    folds the parent's peak into it, so a small command started from a big
    process reports the parent's size.) Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def process_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def mapped_file_rss(path: Path) -> int:
    """Resident bytes of ``path``'s memory mappings in this process (0 if unknown)."""
    import psutil

    target = os.path.realpath(path)
    try:
        maps = psutil.Process().memory_maps(grouped=True)
    except (psutil.Error, NotImplementedError, OSError):
        return 0
    return int(sum(getattr(m, "rss", 0) for m in maps if os.path.realpath(m.path) == target))


def memory_model(engine: Engine, kv_layout: str | None = None, kv_type: KvType | None = None) -> MemoryModel:
    """The planner's memory model of a loaded engine, from what its protocol declares, for
    one of its KV layouts (None: its default) and cache types (None: the layout's)."""
    info = engine.info
    layout = engine.memory_layout if kv_layout is None else engine.kv_layouts[kv_layout]
    kv = kv_type if kv_type is not None else KvType(layout.kv_type, layout.kv_type)
    return MemoryModel(
        fixed_bytes=int(engine.baseline_anon_bytes) + info.file_size,
        kv_bytes_per_cell=info.kv_bytes_per_cell(kv.k, kv.v),
        prompt_per_sequence=layout.prompt_per_sequence,
        cell_pad=layout.cell_pad,
        streams=layout.streams,
        compute_per_token=layout.compute_per_token,
        compute_per_token_sq=layout.compute_per_token_sq,
        logits_bytes_per_seq=4 * info.n_vocab,
    )
