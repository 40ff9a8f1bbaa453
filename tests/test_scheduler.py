"""The scheduler's rules on the scripted engine: shared steps, admission, queue order,
rejection, deadlines counted from arrival, cancellation, the prefix cache."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from edgescale.api import Runtime
from edgescale.errors import BudgetInfeasible, DeadlineMissed, QueueFull
from edgescale.scheduler.config import SchedulerConfig
from edgescale.strategies.planner import Budget
from tests.fake_engine import FakeEngine
from tests.scheduling import WAIT_S, DecodeClock, ask, scheduler_on

SCRIPTS = {
    "A?": [" The answer is 1.", " The answer is 1!", " It is 2."],
    "B?": [" The answer is 5.", " 5", " it is 6 or so"],
    "C?": [" " + "z" * 300 + " The answer is 9."],
}


@contextmanager
def runtime(tmp_path: Path, **config: object) -> Iterator[Runtime]:
    """A runtime over the scripted engine; on exit its scheduler's loop stops, or the test fails."""
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"stands in for a model file")
    rt = Runtime(FakeEngine(SCRIPTS, path=model), scheduler=SchedulerConfig(**config))  # type: ignore[arg-type]
    try:
        yield rt
    finally:
        rt.scheduler.close(timeout=WAIT_S)
        rt.close()


def summary(res):  # type: ignore[no-untyped-def]
    return res.answer, res.votes, [(s.text, s.finish_reason) for s in res.samples], res.stop_reason


def test_queries_share_steps_and_answer_as_alone(tmp_path: Path) -> None:
    asks = [("A?", "maj@3"), ("B?", "short-2@3"), ("C?", "single")]
    with runtime(tmp_path) as alone:
        expected = [summary(ask(alone, p, strategy=s, answer="number", max_tokens=400)) for p, s in asks]
        alone_calls = alone.engine.decode_calls
    with runtime(tmp_path, max_running=3) as rt:
        futures = rt.scheduler.submit_many([rt.request(p, strategy=s, answer="number", max_tokens=400)
                                            for p, s in asks])
        got = [summary(f.result(timeout=WAIT_S)) for f in futures]
        shared_calls = rt.engine.decode_calls
    assert got == expected
    assert expected[0][0] == "1" and expected[1][0] == "5" and expected[2][0] == "9"
    assert shared_calls < alone_calls  # the three decoded in shared steps


def admission_order(rt: Runtime, asks: list[tuple[str, float | None]]) -> list[str]:
    """The prompts in the order they were admitted: they arrive together and one runs at a time
    (max_running=1), so each waited in the queue longer than the one admitted before it. (One
    arrival for all: making a request takes time of its own, the device profile's the first time.)"""
    arrival = time.perf_counter()
    requests = [rt.request(prompt, strategy="single", answer="number", arrival=arrival,
                           budget=Budget(deadline_s=deadline) if deadline else None) for prompt, deadline in asks]
    results = [f.result(timeout=WAIT_S) for f in rt.scheduler.submit_many(requests)]
    waited = sorted(zip((r.stats.queue_s for r in results), (prompt for prompt, _ in asks)))
    return [prompt for _, prompt in waited]


def test_fifo_admits_in_arrival_order_and_edf_by_deadline(tmp_path: Path) -> None:
    asks = [("C?", None), ("A?", 60.0), ("B?", 30.0)]
    with runtime(tmp_path, max_running=1, policy="fifo") as rt:
        assert admission_order(rt, asks) == ["C?", "A?", "B?"]
    with runtime(tmp_path, max_running=1, policy="edf") as rt:
        assert admission_order(rt, asks) == ["B?", "A?", "C?"]


def test_a_full_queue_refuses_new_queries(tmp_path: Path) -> None:
    with runtime(tmp_path, max_queue=2) as rt:
        reqs = [rt.request(p) for p in ("A?", "B?", "C?")]
        with pytest.raises(QueueFull, match="queue holds 2"):
            rt.scheduler.submit_many(reqs)
        assert rt.scheduler.stats.rejected == 3


def test_a_deadline_that_passes_in_the_queue_is_answered_at_once(tmp_path: Path) -> None:
    # time passes only in decodes (10 ms each): the deadline falls 50 steps into the long query
    clock = DecodeClock(step_s=0.01)
    with runtime(tmp_path) as rt, scheduler_on(clock.wrap(rt.engine), clock, max_running=1) as scheduler:
        long = rt.request("C?", strategy="single", answer="number", max_tokens=400, arrival=clock())
        late = rt.request("A?", strategy="maj@3", answer="number", budget=Budget(deadline_s=0.5), arrival=clock())
        slow, quick = scheduler.submit_many([long, late])
        res = quick.result(timeout=WAIT_S)
        assert res.stop_reason == "deadline" and res.samples == () and res.answer is None
        # answered at the sweep before the deadline would pass (now + the last step's time), never later
        assert 0.5 - 2 * clock.step_s < res.stats.queue_s < 0.5
        assert res.stats.wall_s == pytest.approx(res.stats.queue_s)
        assert slow.result(timeout=WAIT_S).answer == "9"
        assert scheduler.stats.expired == 1
    with runtime(tmp_path, max_running=1, on_expired="reject") as rt:
        long = rt.request("C?", strategy="single")
        late = rt.request("A?", budget=Budget(deadline_s=0.001))
        _, quick = rt.scheduler.submit_many([long, late])
        with pytest.raises(DeadlineMissed):
            quick.result(timeout=WAIT_S)


def test_cancel_ends_a_running_query_and_frees_its_sequences(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        # cancelled from its fifth step, as a client's disconnect is seen between steps (from the
        # loop's own thread: the fake engine would finish the text before a waiting thread woke)
        def on_step(gen, events) -> None:  # type: ignore[no-untyped-def]
            if len(gen.states[0].tokens) >= 5:
                req.cancel()

        req = rt.request("C?", strategy="single", answer="number", on_step=on_step)
        fut = rt.scheduler.submit(req)
        res = fut.result(timeout=WAIT_S)
        assert res.stop_reason == "cancelled" and res.samples[0].finish_reason == "cancelled"
        assert 0 < res.samples[0].n_tokens < 300
        shared = rt.scheduler._shared  # noqa: SLF001  (inspecting the KV the query held)
        assert shared is not None and rt.scheduler.running == 0
        assert shared.cells_used() <= rt.scheduler.cache_cells()


def test_a_query_larger_than_the_memory_budget_is_infeasible(tmp_path: Path) -> None:
    with runtime(tmp_path, memory_bytes=2048) as rt:
        with pytest.raises(BudgetInfeasible, match="memory budget leaves room for"):
            ask(rt, "A?", strategy="maj@3", max_tokens=400)


def test_a_repeated_prompt_is_read_from_the_prefix_cache(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        first = ask(rt, "B?", strategy="maj@3", answer="number")
        again = ask(rt, "B?", strategy="maj@3", answer="number")
        assert summary(again) == summary(first)
        n = first.stats.prompt_tokens
        assert (first.stats.cached_prompt_tokens, again.stats.cached_prompt_tokens) == (0, n - 1)
        assert rt.scheduler.stats.cache_hits == 1
    with runtime(tmp_path, prefix_cache=False) as rt:
        ask(rt, "B?", strategy="maj@3")
        assert ask(rt, "B?", strategy="maj@3").stats.cached_prompt_tokens == 0


def test_min_memory_bytes_is_the_budget_that_holds_the_cells(tmp_path: Path) -> None:
    from edgescale.runtime.memory import memory_model
    from edgescale.scheduler.config import cells_in_budget, min_memory_bytes

    with runtime(tmp_path) as rt:
        memory = memory_model(rt.engine)
    for cells in (1, 300, 5000):
        need = min_memory_bytes(memory, cells, n_ids=20, max_batch=84, max_running=4)
        assert cells_in_budget(memory, need, n_ids=20, max_batch=84, max_running=4) >= cells
        assert cells_in_budget(memory, int(need * 0.9), n_ids=20, max_batch=84, max_running=4) < cells


def test_a_burst_of_prompts_is_read_a_bounded_amount_per_step(tmp_path: Path) -> None:
    """Eight queries arriving together read their prompts at most step_prompt_tokens a step."""
    prompts = {f"Q{i}?" + "x" * 40: [" The answer is 1."] for i in range(8)}
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"stands in for a model file")
    engine = FakeEngine(prompts, path=model)
    config = SchedulerConfig(max_running=8, prefill_chunk=8, step_prompt_tokens=16)
    with Runtime(engine, scheduler=config) as rt:  # type: ignore[arg-type]
        futures = rt.scheduler.submit_many([rt.request(p, answer="number", max_tokens=20) for p in prompts])
        assert all(f.result(timeout=WAIT_S).answer == "1" for f in futures)
        read = [prompt for _, prompt, _ in rt.scheduler.stats.recent]
        rt.scheduler.close(timeout=WAIT_S)
    assert max(read) <= 16 and sum(read) >= 8 * 40
