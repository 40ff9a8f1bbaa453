"""One KV stream per sequence (llama.cpp ``kv_unified`` off), on the real default model.

A query's sequences attend to their own streams only, so whatever else shares the
loop changes nothing in its tokens: bitwise, with queries ending at different times
(their streams are moved so that live ones stand on consecutive ids), probes run in
place, and prompts served from the prefix cache. The ``exact`` layout
(``--deterministic``) keeps that true where the plain streams would not (a lone
sequence past 256 cells, whose attention llama.cpp then splits across threads).
"""

from __future__ import annotations

import pytest

from edgescale.api import Budget, Runtime
from edgescale.runtime.engine import MemoryLayout
from edgescale.scheduler.config import SchedulerConfig
from edgescale.strategies.planner import kv_layout_for

ASKS = [
    ("What is 12 + 7?", "single"),
    ("Name a colour of the sky.", "maj@3"),
    ("Is water wet? Answer yes or no.", "ffs@3"),
    ("What is the capital of France?", "early-exit:k=2,every=8"),
    ("Count from one to five.", "maj@4"),
    ("What is 3 times 4?", "adaptive:max=4,wave=2"),
]
STORY = "The lighthouse keeper wrote in his log every night about the sea, the storms and the ships. " * 14


def texts(res):  # type: ignore[no-untyped-def]
    return [(s.text, s.n_tokens, s.finish_reason) for s in res.samples], res.answer


def run(engine, layout: str, lanes: int, asks, **ask):  # type: ignore[no-untyped-def]
    """Every ask submitted at once to a loop of ``lanes`` queries; their results, and the
    streams the loop moved."""
    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(max_running=lanes, expect_running=lanes,
                                                                   kv_layout=layout, prefill_chunk=32))
    try:
        futures = rt.scheduler.submit_many([rt.request(p, strategy=s, seed=3, **ask) for p, s in asks])
        results = [f.result(timeout=300) for f in futures]
        shared = rt.scheduler._shared  # noqa: SLF001  (the moves it made)
        return results, shared.moves if shared is not None else 0
    finally:
        rt.scheduler.close()


def test_the_layout_rule() -> None:
    both = ["unified", "streams", "exact"]
    assert kv_layout_for("auto", lanes=1, available=both) is None  # one query: its samples share the prompt
    assert kv_layout_for("auto", lanes=8, available=both) == "streams"
    assert kv_layout_for("auto", lanes=8, available=["rows"]) is None  # ONNX Runtime has its own
    assert kv_layout_for("unified", lanes=8, available=both) == "unified"
    assert kv_layout_for("auto", lanes=1, available=both, deterministic=True) == "exact"
    with pytest.raises(Exception, match="no 'streams' KV layout"):
        kv_layout_for("streams", lanes=2, available=["rows"])
    with pytest.raises(Exception, match="--deterministic needs one KV stream per sequence"):
        kv_layout_for("auto", lanes=2, available=["rows"], deterministic=True)
    with pytest.raises(Exception, match="unknown KV layout"):
        kv_layout_for("paged", lanes=2, available=both)


def test_stream_cells_are_counted_per_row() -> None:
    streams = MemoryLayout(prompt_per_sequence=True, streams=True, cell_pad=256)
    unified = MemoryLayout(prompt_per_sequence=False, cell_pad=256)
    shape = dict(prompt_tokens=100, n_seqs=4, new_tokens=50, probe_slots=1, probe_cells=30)
    # each sample its own copy of the prompt; a probe runs in its sample's stream (no spare id)
    assert streams.query_cells(**shape) == 4 * 150 + 30 and streams.seq_ids(4, 1) == 4
    assert streams.row_cells(prompt_tokens=100, new_tokens=50, probe_slots=1, probe_cells=30) == 180
    assert streams.kv_cells(**shape) == 4 * 256  # four streams, each padded
    assert unified.query_cells(**shape) == 100 + 4 * 50 + 30 and unified.seq_ids(4, 1) == 5
    assert streams.context_cells(**shape) == 180 and unified.context_cells(**shape) == 330


def test_queries_together_answer_bitwise_as_alone_in_streams(engine) -> None:
    alone = [texts(run(engine, "streams", 1, [a], max_tokens=40)[0][0]) for a in ASKS]
    together, moves = run(engine, "streams", 8, ASKS, max_tokens=40)
    assert [texts(r) for r in together] == alone
    assert moves > 0  # samples ended at different times: live streams were moved together


def test_the_prefix_cache_serves_across_streams(engine) -> None:
    prompts = [(STORY + " What did he write about first?", "single"), (STORY + " How many ships?", "maj@2")]
    cold = [texts(r) for r in run(engine, "streams", 1, prompts[1:], max_tokens=24)[0]]
    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(kv_layout="streams", prefill_chunk=32))
    try:
        rt.ask(prompts[0][0], strategy="single", max_tokens=24, seed=3)
        warm = rt.ask(prompts[1][0], strategy="maj@2", max_tokens=24, seed=3)
    finally:
        rt.scheduler.close()
    assert warm.stats.cached_prompt_tokens > 100  # the shared story came from another query's stream
    assert [texts(warm)] == cold


def test_exact_streams_hold_past_256_cells(engine) -> None:
    """A lone sequence past 256 cells is where llama.cpp would split its attention: the exact
    layout keeps it bitwise equal to the same sequence decoded beside others."""
    long_asks = [(STORY + f" Question {i}: what is {i} plus {i}?", spec)
                 for i, spec in enumerate(("single", "maj@2", "single", "ffs@2"))]
    alone = [texts(run(engine, "exact", 1, [a], max_tokens=48)[0][0]) for a in long_asks]
    together, _ = run(engine, "exact", 4, long_asks, max_tokens=48)
    assert together[0].stats.prompt_tokens + 48 > 256
    assert [texts(r) for r in together] == alone


def test_the_plan_counts_the_cells_admission_reserves_in_streams(engine) -> None:
    from tests.kv_accounting import assert_plan_cells_are_reserved

    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(kv_layout="streams"))
    try:
        assert_plan_cells_are_reserved(rt)
    finally:
        rt.scheduler.close()


def test_a_deadline_forces_an_answer_in_place(engine) -> None:
    """The forced-answer probe at a deadline runs in the sample's own stream."""
    (res,), _ = run(engine, "streams", 1, [("Write a very long story about a castle.", "single")],
                    max_tokens=1500, budget=Budget(deadline_s=3.0), ignore_eos=True)
    assert res.stop_reason == "deadline" and res.probes and res.samples[0].finish_reason == "deadline"


def test_deterministic_is_refused_where_kernels_round_by_width(engine) -> None:  # type: ignore[no-untyped-def]
    """Gemma 3's Q4_K_M rounds by batch width on some CPUs (an Intel Xeon with AVX-512 here):
    --deterministic says so in one line there, and serves where it holds."""
    from edgescale.models.catalog import resolve_model
    from edgescale.runtime.invariance import width_variance
    from edgescale.runtime.llama_engine import LlamaCppEngine
    from tests.test_cli import cli

    with LlamaCppEngine.load(resolve_model("gemma3-270m"), n_threads=2) as gemma:
        varies = width_variance(gemma) > 0
    proc = cli("batch", "-m", "gemma3-270m", "--deterministic", "--parallel", "2", "-n", "4",
               stdin='{"prompt": "The sky is"}\n')
    refused = proc.returncode == 2 and proc.stderr.startswith("error: --deterministic cannot hold")
    assert refused == varies and (refused or proc.returncode == 0), proc.stderr
    assert width_variance(engine) == 0.0  # SmolLM2's Q4_1: the same row at every width
    bad = cli("batch", "--kv-layout", "paged", stdin='{"prompt": "hi"}\n')
    assert bad.returncode == 2 and "unknown KV layout 'paged'" in bad.stderr and "Traceback" not in bad.stderr
