"""The shared decode loop on the real default model.

Queries together answer bitwise as they do alone where llama.cpp takes the same CPU
kernels either way: every step under 64 token rows (``prefill_chunk=8``; at 64 rows
its flash attention switches to a tiled kernel) and the KV in use under 512 cells
(a one-row step above that splits the KV across threads); SmolLM2's Q4_1 matmuls do
not depend on the batch width, and ended samples' cells are parked. With the
default chunk the difference is rounding, bounded (measured against teacher-forced
single runs). Also: joins, cancels, deadlines from arrival, the prefix cache and its
eviction, and the memory budget with 16 queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgescale.api import Runtime
from edgescale.scheduler.config import SchedulerConfig
from edgescale.strategies.planner import Budget
from tests.scheduling import WAIT_S, DecodeClock, ask, scheduler_on, wait_until

MB = 2**20
ASKS = [
    ("What is 12 + 7?", "single"),
    ("Name a colour of the sky.", "maj@3"),
    ("Is water wet? Answer yes or no.", "ffs@3"),
    ("What is the capital of France?", "single"),
]
FEWSHOT = "".join(f"Question: What is {a} plus {b}?\nAnswer: {a + b}\n\n" for a, b in
                  ((3, 4), (10, 5), (21, 8), (7, 7), (40, 2), (13, 6)))


def tokens_of(res):  # type: ignore[no-untyped-def]
    return [(s.text, s.n_tokens, s.finish_reason) for s in res.samples], res.answer


@pytest.fixture
def shared(engine):  # type: ignore[no-untyped-def]
    """A runtime whose shared context is sized from a memory budget (room for everything),
    reading prompts 8 tokens a step (the exact regime, see the module notes)."""
    rt = Runtime(engine, "smollm2-135m",
                 scheduler=SchedulerConfig(memory_bytes=2048 * MB, max_running=8, prefill_chunk=8))
    yield rt
    rt.scheduler.close(timeout=WAIT_S)


def test_queries_together_answer_bitwise_as_one_at_a_time(engine, shared) -> None:
    alone = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(prefix_cache=False))
    try:
        expected = [tokens_of(ask(alone, p, strategy=s, max_tokens=40, seed=3)) for p, s in ASKS]
    finally:
        alone.scheduler.close(timeout=WAIT_S)
    futures = shared.scheduler.submit_many([shared.request(p, strategy=s, max_tokens=40, seed=3) for p, s in ASKS])
    got = [tokens_of(f.result(timeout=WAIT_S)) for f in futures]
    assert got == expected
    sample_tokens = sum(n for samples, _ in expected for _, n, _ in samples)
    assert shared.scheduler.stats.steps < sample_tokens / 2  # they shared steps


def test_with_the_default_chunk_the_difference_is_rounding(engine) -> None:
    """Every sampled token's log-probability against the same tokens decoded alone."""
    import numpy as np

    from edgescale.runtime.replay import replay
    from edgescale.runtime.sampling import log_softmax_at

    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(memory_bytes=2048 * MB, max_running=8))
    gens = {}
    try:
        reqs = []
        for i, (p, s) in enumerate(ASKS):
            reqs.append(rt.request(p, strategy=s, max_tokens=40, seed=3,
                                   on_step=lambda gen, ev, i=i: gens.setdefault(i, gen)))
        for f in rt.scheduler.submit_many(reqs):
            f.result(timeout=WAIT_S)
    finally:
        rt.scheduler.close(timeout=WAIT_S)
    worst = 0.0
    compared = 0
    for gen in gens.values():
        for st in gen.states:
            if not st.tokens:
                continue
            rows, session = replay(engine, gen.prompt, [st.tokens], max_new=40)
            session.close()
            alone = log_softmax_at(np.stack(rows[0][: len(st.tokens)]), np.asarray(st.tokens))
            worst = max(worst, float(np.abs(alone - np.asarray(st.logprobs)).max()))
            compared += len(st.tokens)
    assert compared > 100
    assert worst < 3.0  # a row of another query or position would be off by far more


def test_a_query_admitted_mid_flight_does_not_change_the_others(shared) -> None:
    solo = tokens_of(ask(shared, "Write a short poem about the sea.", strategy="maj@2", max_tokens=48, seed=1))
    seen: list[int] = []
    first = shared.submit("Write a short poem about the sea.", strategy="maj@2", max_tokens=48, seed=1,
                          on_step=lambda gen, ev: seen.append(len(gen.states[0].tokens)))
    wait_until(lambda: len(seen) >= 10, "the first query's tenth step")
    joiner = shared.submit(FEWSHOT + "Question: What is 11 plus 30?\nAnswer:", strategy="single", max_tokens=8)
    assert tokens_of(first.result(timeout=WAIT_S)) == solo
    assert joiner.result(timeout=WAIT_S).stats.generated_tokens > 0


def test_cancelling_one_query_frees_its_cells_while_the_other_goes_on(shared) -> None:
    solo = tokens_of(ask(shared, "Tell me about dragons.", strategy="single", max_tokens=64, seed=2))
    steps: list[int] = []
    keep = shared.submit("Tell me about dragons.", strategy="single", max_tokens=64, seed=2)
    drop_req = shared.request("Write a very long story about a castle.", strategy="maj@4", max_tokens=200,
                              ignore_eos=True, on_step=lambda gen, ev: steps.append(len(gen.live)))
    drop = shared.scheduler.submit(drop_req)
    wait_until(lambda: len(steps) >= 5, "the dropped query's fifth step")
    drop_req.cancel()
    res = drop.result(timeout=WAIT_S)
    assert res.stop_reason == "cancelled" and {s.finish_reason for s in res.samples} == {"cancelled"}
    assert all(s.n_tokens < 200 for s in res.samples)
    assert tokens_of(keep.result(timeout=WAIT_S)) == solo
    used, _ = shared.scheduler.kv_cells()
    assert used <= shared.scheduler.cache_cells()  # both queries' own cells are free again


def test_a_deadline_counts_from_arrival(engine) -> None:
    # on the scheduler's clock, 20 ms a decode: the late query's deadline falls 25 decodes into the
    # long query (one runs at a time), whatever the machine's speed
    rt = Runtime(engine, "smollm2-135m")
    clock = DecodeClock(step_s=0.02)
    with scheduler_on(clock.wrap(engine), clock, max_running=1) as scheduler:
        long = rt.request("Write a very long story about the sea.", strategy="single", max_tokens=120,
                          ignore_eos=True, arrival=clock())
        late = rt.request("What is 2 + 2?", strategy="single", max_tokens=32, budget=Budget(deadline_s=0.5),
                          arrival=clock())
        long_done, late_done = scheduler.submit_many([long, late])
        res = late_done.result(timeout=WAIT_S)
        assert long_done.result(timeout=WAIT_S).stats.generated_tokens > 25  # it held the loop past the deadline
    assert res.stats.queue_s > 0.2  # it waited for the long query
    # answered from the queue (no sample) by its deadline, counted from its arrival
    assert res.stop_reason == "deadline" and res.samples == ()
    assert res.stats.wall_s <= 0.5 and res.stats.wall_s == pytest.approx(res.stats.queue_s)


def test_the_prefix_cache_reads_fewer_prompt_tokens_for_the_same_answer(engine, shared) -> None:
    q1 = FEWSHOT + "Question: What is 9 plus 9?\nAnswer:"
    q2 = FEWSHOT + "Question: What is 12 plus 5?\nAnswer:"
    cold = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(prefix_cache=False, prefill_chunk=8))
    try:
        expected = tokens_of(ask(cold, q2, strategy="maj@2", max_tokens=12, chat=False, answer="number"))
    finally:
        cold.scheduler.close(timeout=WAIT_S)
    ask(shared, q1, strategy="single", max_tokens=4, chat=False)
    res = ask(shared, q2, strategy="maj@2", max_tokens=12, chat=False, answer="number")
    fewshot_tokens = len(engine.tokenize(FEWSHOT))
    assert res.stats.cached_prompt_tokens >= fewshot_tokens - 2  # the shared examples were not read again
    assert tokens_of(res) == expected


def test_cache_entries_are_evicted_when_the_budget_is_small(engine) -> None:
    from edgescale.runtime.memory import memory_model

    # room for about 3000 cells next to what this process already holds (the suite's own
    # imports count too), of which the cache may keep a quarter: a few of these prompts
    budget = memory_model(engine).fixed_bytes + 130 * MB
    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(memory_bytes=budget, max_running=1))
    try:
        prompts = [f"Question {i}: name {i} things that are blue.\n{FEWSHOT}Question: What is {i} plus {i}?\n"
                   "Answer:" for i in range(12)]  # no two share more than a few tokens
        for prompt in prompts:
            ask(rt, prompt, strategy="single", max_tokens=4, chat=False)
        cache = rt.scheduler._cache  # noqa: SLF001  (the cache's own counters)
        assert cache is not None and 0 < len(cache) < 12 and cache.evictions == 12 - len(cache)
        assert rt.scheduler.cache_cells() <= cache.max_cells
    finally:
        rt.scheduler.close(timeout=WAIT_S)


@pytest.mark.timeout(900)  # the batch run is allowed 600 s
def test_sixteen_queries_stay_within_the_memory_budget(model_path: Path) -> None:
    budget = 450 * MB
    lines = "".join(json.dumps({"id": i, "prompt": f"Write a very long story about the number {i}.",
                                "strategy": "maj@4"}) + "\n" for i in range(16))
    proc = subprocess.run(
        [sys.executable, "-m", "edgescale.cli", "batch", "--parallel", "16", "--memory", "450MB", "-n", "48"],
        input=lines, capture_output=True, text=True, timeout=600,
        env={**os.environ, "EDGESCALE_THREADS": "2"}, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["id"] for r in records] == list(range(16)) and all(r["ok"] for r in records)
    # every sample ran its 48 tokens: the KV the plans counted was filled, not spared by early stops
    assert all(s["n_tokens"] == 48 for r in records for s in r["samples"])
    assert max(r["stats"]["peak_rss_bytes"] for r in records) <= budget


def test_the_plan_counts_the_cells_admission_reserves(engine) -> None:
    from tests.kv_accounting import assert_plan_cells_are_reserved

    rt = Runtime(engine, "smollm2-135m")
    try:
        assert_plan_cells_are_reserved(rt)
    finally:
        rt.scheduler.close(timeout=WAIT_S)
