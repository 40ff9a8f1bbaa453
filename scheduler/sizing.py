"""How big the shared context is made: a pure function of the scheduler's settings, the
memory model and what the head of the queue needs (``Scheduler`` opens what it says)."""

from __future__ import annotations

from dataclasses import dataclass

from edgescale.errors import BudgetInfeasible
from edgescale.runtime.generate import batch_size
from edgescale.runtime.memory import MemoryModel
from edgescale.scheduler.config import (
    CACHE_IDS,
    SPARE_IDS,
    STREAM_CACHE_IDS,
    SchedulerConfig,
    cells_in_budget,
    min_memory_bytes,
)


@dataclass(frozen=True)
class Need:
    """What the head query takes: its cells, sequence ids, longest row, and (when it runs
    under a memory budget of its own) its plan's batch."""

    cells: int
    ids: int
    row: int
    own_budget_batch: int | None = None  # set: the query's own memory budget sizes the context


@dataclass(frozen=True)
class ContextShape:
    n_cells: int
    n_ids: int
    max_batch: int


def context_shape(config: SchedulerConfig, memory: MemoryModel, need: Need, *, group: int, max_ids: int,
                  context_cells: int) -> ContextShape:
    """A context for ``group`` queries each needing what the head needs (at least
    ``config.expect_running``), within the scheduler's memory budget. A head planned under
    a memory budget of its own (and no scheduler budget) gets exactly what its plan counted,
    so that its peak stays there. With one stream per id, every stream holds the head's
    longest row (at least ``config.stream_cells``)."""
    streams = memory.streams
    group = _group_for(config, memory, need, group)
    if config.memory_bytes is None and need.own_budget_batch is not None:
        n_ids = min(max_ids, need.ids)
        return ContextShape(n_ids * memory.padded(need.row) if streams else need.cells, n_ids,
                            max(need.own_budget_batch, need.ids))
    cache_ids = (STREAM_CACHE_IDS if streams else CACHE_IDS) if config.prefix_cache else 0
    n_ids = need.ids * group + cache_ids
    if not memory.prompt_per_sequence:
        # ids cost nothing in a unified cache, and spare ones let ended sequences' cells stay parked
        n_ids = max(n_ids * 2, SPARE_IDS)
    n_ids = min(max_ids, n_ids)
    max_batch = batch_size(max(config.prefill_chunk, config.bulk_prefill_chunk or 0) + n_ids, 1)
    if streams:
        stream = memory.padded(max(need.row, config.stream_cells))
        if config.memory_bytes is not None:
            room = _cells_in_budget(config, memory, n_ids, max_batch) // stream
            if room < need.ids:
                raise _infeasible(config, memory, f"{room} KV streams of {stream} cells", f"{need.ids}",
                                  need.ids * stream, need.ids, max_batch)
            n_ids = min(n_ids, room)
        return ContextShape(n_ids * stream, n_ids, max_batch)
    if config.memory_bytes is None:
        # for the demand: the head's need for each query waiting with it, room for the prefix
        # cache, at least min_cells
        n_cells = need.cells * group
        if config.prefix_cache:
            n_cells = int(n_cells / (1 - config.prefix_cache_fraction))
        return ContextShape(max(n_cells, config.min_cells), n_ids, max_batch)
    # the budget's room, once (no use for more cells than the sequences could ever fill)
    room = min(_cells_in_budget(config, memory, n_ids, max_batch), context_cells * n_ids)
    if room < need.cells:
        raise _infeasible(config, memory, f"{room} KV cells", f"{need.cells}", need.cells, n_ids, max_batch)
    return ContextShape(room, n_ids, max_batch)


def _group_for(config: SchedulerConfig, memory: MemoryModel, need: Need, group: int) -> int:
    """How many queries of the head's size the context is made for. A head larger than what
    the scheduler was sized for (a server's ``--max-tokens``) is made room for alone, or with
    as many as the default size holds: one request of 16 samples of 4,096 tokens must not
    make a context for ``--parallel`` of them (8 x 1.6 GB of KV on SmolLM2)."""
    if memory.streams:
        return 1 if config.stream_cells and need.row > config.stream_cells else group
    if config.min_cells and need.cells * group > config.min_cells:
        return max(1, min(group, config.min_cells // need.cells))
    return group


def available_memory_refusal(kv_bytes: float, available: int) -> BudgetInfeasible | None:
    """Without a memory budget, a context whose KV cache would not fit the memory free now
    (90% of it) is refused rather than made (llama.cpp clears all of it at once)."""
    if kv_bytes <= 0.9 * available:
        return None
    return BudgetInfeasible(
        f"the query needs a KV cache of {kv_bytes / 2**30:.1f} GB and {available / 2**30:.1f} GB of memory is "
        f"free: ask for fewer samples or tokens, or set a memory budget (--memory)")


def _cells_in_budget(config: SchedulerConfig, memory: MemoryModel, n_ids: int, max_batch: int) -> int:
    assert config.memory_bytes is not None
    return cells_in_budget(memory, config.memory_bytes, n_ids=n_ids, max_batch=max_batch,
                           max_running=config.max_running)


def _infeasible(config: SchedulerConfig, memory: MemoryModel, room: str, wanted: str, cells: int, n_ids: int,
                max_batch: int) -> BudgetInfeasible:
    need = min_memory_bytes(memory, cells, n_ids=n_ids, max_batch=max_batch, max_running=config.max_running)
    return BudgetInfeasible(
        f"the memory budget leaves room for {room} next to the model; the query needs {wanted}: it needs a "
        f"budget of at least {need / 2**20:.0f} MB (--memory), or fewer samples or tokens")
