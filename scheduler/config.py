"""The scheduler's values: its configuration, its counters, and how a memory budget sizes
the shared context (scheduler.loop owns the loop; scheduler.request is what it takes)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edgescale.errors import UsageError
from edgescale.runtime.kv_types import KvType
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.planner import MEMORY_SAFETY

POLICIES = ("fifo", "edf")
CACHE_IDS = 16  # sequence ids kept for prefix-cache entries
STREAM_CACHE_IDS = 4  # with one stream per id, where each entry holds a whole stream
SPARE_IDS = 64  # at least this many ids in a unified cache


def cells_in_budget(memory: MemoryModel, memory_bytes: int, *, n_ids: int, max_batch: int,
                    max_running: int = 1) -> int:
    """KV cells a shared context may have within ``memory_bytes`` for the whole process: the
    planner's memory model (the model, the runtime, compute buffers, the backend's logits
    rows), two vocabulary rows per running query (its prompt's row and scratch) and the
    rows a probe makes the others copy; rounded down to the backend's cell padding."""
    rows = memory.logits_bytes_per_seq * (2 * max_running + max_batch)
    room = memory_bytes * MEMORY_SAFETY - memory.peak(n_seqs=n_ids, n_cells=0, n_batch=max_batch) - rows
    cells = max(0, int(room / memory.kv_bytes_per_cell))
    return cells // memory.cell_pad * memory.cell_pad


def min_memory_bytes(memory: MemoryModel, cells: int, *, n_ids: int, max_batch: int, max_running: int = 1) -> int:
    """The smallest ``memory_bytes`` whose :func:`cells_in_budget` holds ``cells``."""
    rows = memory.logits_bytes_per_seq * (2 * max_running + max_batch)
    padded = -(-cells // memory.cell_pad) * memory.cell_pad
    need = memory.peak(n_seqs=n_ids, n_cells=0, n_batch=max_batch) + rows + padded * memory.kv_bytes_per_cell
    return int(need / MEMORY_SAFETY) + 1


@dataclass(frozen=True)
class SchedulerConfig:
    memory_bytes: int | None = None  # the whole process's budget: sizes the shared context once
    max_running: int = 16  # queries decoding at once at most
    max_queue: int = 256  # queries waiting at most; more are refused (QueueFull)
    policy: str = "fifo"  # or "edf"
    prefix_cache: bool = True
    prefix_cache_fraction: float = 0.25  # of the context's cells the cache may keep
    prefill_chunk: int = 64  # prompt tokens a reading query adds to a step (the policy: see the bench)
    on_expired: str = "answer"  # or "reject": a query whose deadline passed while it waited
    min_cells: int = 0  # without a budget, the shared context has at least this many cells
    expect_running: int = 1  # it is sized for at least this many queries (a server's come one by one)
    step_prompt_tokens: int | None = None  # prompt tokens one step reads at most (None: 2 x the chunk)
    # prompt tokens a reading query adds to a step while no query in the loop has a deadline (long
    # steps then cost latency, not missed deadlines; fewer, fuller steps read faster). None: prefill_chunk
    bulk_prefill_chunk: int | None = None
    kv_layout: str | None = None  # the engine's KV layout for the shared context (None: its default)
    kv_type: KvType | None = None  # its cache's element types (None: the layout's, f16 on llama.cpp)
    # the loop's thread (and the compute threads it starts) runs at this nice value, so that a
    # server's event loop keeps its core on a small box (Linux; 0: as the process)
    compute_nice: int = 0
    stream_cells: int = 0  # streams layout: each stream holds at least this many cells (a server's requests)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UsageError(f"unknown queue policy {self.policy!r}; choose one of: {', '.join(POLICIES)}")
        if self.on_expired not in ("answer", "reject"):
            raise UsageError("on_expired must be 'answer' or 'reject'")
        if self.max_running < 1 or self.max_queue < 1 or self.prefill_chunk < 1 or (self.bulk_prefill_chunk or 1) < 1:
            raise UsageError("max_running, max_queue and prefill_chunk must be at least 1")
        if not 0 <= self.compute_nice <= 19:
            raise UsageError(f"the compute threads' nice value must be between 0 and 19, got {self.compute_nice}")


def read_chunk(config: SchedulerConfig, deadlines: bool) -> int:
    """Prompt tokens a reading query adds to a step: ``prefill_chunk`` while some query in the
    loop has a deadline, else ``bulk_prefill_chunk``."""
    if deadlines or config.bulk_prefill_chunk is None:
        return config.prefill_chunk
    return config.bulk_prefill_chunk


@dataclass
class SchedulerStats:
    """Counters for /metrics and the benches."""

    admitted: int = 0
    finished: int = 0
    expired: int = 0  # answered at once: the deadline passed in the queue
    rejected: int = 0
    steps: int = 0
    tokens: int = 0  # sample tokens decoded
    prompt_tokens_read: int = 0
    prompt_tokens_cached: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    contexts: int = 0  # shared contexts made (the first, and each resize)
    # (seconds, prompt tokens read, sample tokens decoded) of the latest steps
    recent: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=4096))

    def tokens_per_s(self, window: int = 64) -> float:
        """Sample tokens per second over the last ``window`` steps."""
        last = list(self.recent)[-window:]
        seconds = sum(t for t, _, _ in last)
        return sum(d for _, _, d in last) / seconds if seconds > 0 else 0.0
