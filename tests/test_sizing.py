"""How the shared context is sized (``scheduler.sizing``): pure functions, no model."""

from __future__ import annotations

from dataclasses import replace

from edgescale.runtime.memory import MemoryModel
from edgescale.scheduler.config import SchedulerConfig
from edgescale.scheduler.sizing import Need, available_memory_refusal, context_shape

MB = 2**20
UNIFIED = MemoryModel(fixed_bytes=166 * MB, kv_bytes_per_cell=23040.0, compute_per_token=4 * (49152 + 4 * 576),
                      logits_bytes_per_seq=4 * 49152)
STREAMS = replace(UNIFIED, prompt_per_sequence=True, streams=True)
# what `edgescale serve --parallel 8` sizes for: 8 requests of --max-tokens 256 + 512
SERVER = SchedulerConfig(max_running=8, expect_running=8, stream_cells=768, min_cells=8 * 768)


def test_requests_of_the_servers_size_get_room_for_the_group() -> None:
    shape = context_shape(SERVER, STREAMS, Need(cells=8 * 400, ids=9, row=400), group=8, max_ids=256,
                          context_cells=8192)
    assert shape.n_ids >= 8 * 9 and shape.n_cells == shape.n_ids * 768


def test_one_long_request_is_made_room_for_alone_not_parallel_times() -> None:
    """16 samples of 4,096 tokens: a context for that request (and the prefix cache), not for
    8 of them (which was 132 streams of 4,352 cells: 13 GB of KV for SmolLM2)."""
    need = Need(cells=16 * 4200, ids=17, row=4200)
    shape = context_shape(SERVER, STREAMS, need, group=8, max_ids=256, context_cells=8192)
    assert need.ids <= shape.n_ids <= need.ids + 8
    assert shape.n_cells == shape.n_ids * STREAMS.padded(4200)
    flat = context_shape(SERVER, UNIFIED, Need(cells=16 * 4200, ids=17, row=4200), group=8, max_ids=256,
                         context_cells=8192)
    assert flat.n_cells < 2 * 16 * 4200  # the head's own need (with the prefix cache's share), once


def test_a_context_larger_than_free_memory_is_refused_in_one_line() -> None:
    assert available_memory_refusal(1 * 2**30, 4 * 2**30) is None
    refusal = available_memory_refusal(13.2 * 2**30, 8 * 2**30)
    assert refusal is not None
    msg = str(refusal)
    assert "13.2 GB" in msg and "8.0 GB" in msg and "--memory" in msg and "\n" not in msg
