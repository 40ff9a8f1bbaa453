"""The resumable record store and the bench loop on a scripted fake engine (no model)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgescale.api import Runtime
from edgescale.evals.bench import BenchConfig, BenchProgress, parse_strategies, run_bench
from edgescale.evals.datasets import Item
from edgescale.evals.store import RESULTS_FILE, ResultStore, record_key, settings_id
from tests.fake_engine import FakeEngine

ITEMS = tuple(Item(id=f"q{i}", question=f"What is {i} + 40?", answer=str(40 + i), kind="number") for i in range(4))


def fake_runtime() -> tuple[Runtime, FakeEngine]:
    # sample 0 says 40, sample 1 says 41, sample 2 says 41: maj@3 answers 41 (right for q1 only)
    engine = FakeEngine(["The answer is 40.", "The answer is 41.", "So 41. The answer is 41."])
    return Runtime(engine, "fake-model"), engine  # type: ignore[arg-type]


def config(tmp_path: Path, **changes: object) -> BenchConfig:
    base = BenchConfig(dataset="synthetic", strategies=parse_strategies("single,maj@3"), limit=None,
                       max_tokens=32, out=tmp_path / "out")
    return replace(base, **changes)  # type: ignore[arg-type]


def lines(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()]


def test_records_carry_the_telemetry_and_the_score(tmp_path: Path) -> None:
    rt, _ = fake_runtime()
    run = run_bench(config(tmp_path), items=ITEMS[:2], runtime=rt)
    assert run.ran == 4
    recs = lines(tmp_path)
    assert len(recs) == 4
    by = {(r["item_id"], r["strategy"]): r for r in recs}
    assert by[("q0", "single")]["answer"] == "40" and by[("q0", "single")]["correct"] is True
    assert by[("q1", "maj@3")]["answer"] == "41" and by[("q1", "maj@3")]["correct"] is True
    assert by[("q0", "maj@3")]["correct"] is False and by[("q0", "maj@3")]["gold"] == "40"
    for r in recs:
        assert r["model"] == "fake-model" and r["seed"] == 0 and r["dataset"] == "synthetic"
        assert r["result"]["stats"]["total_tokens"] == sum(s["n_tokens"] for s in r["result"]["samples"])
        assert r["rss_peak_bytes"] > 0
    assert len(by[("q0", "maj@3")]["result"]["samples"]) == 3
    assert [r["item_id"] for r in run.records["maj@3"]] == ["q0", "q1"]


def test_rerun_skips_finished_records(tmp_path: Path) -> None:
    rt, engine = fake_runtime()
    first = run_bench(config(tmp_path), items=ITEMS, runtime=rt)
    calls = engine.decode_calls
    again = run_bench(config(tmp_path), items=ITEMS, runtime=rt)
    assert (first.ran, again.ran) == (8, 0)
    assert engine.decode_calls == calls  # nothing was generated
    assert len(lines(tmp_path)) == 8
    assert again.records == first.records


def test_a_changed_setting_reruns(tmp_path: Path) -> None:
    rt, _ = fake_runtime()
    run_bench(config(tmp_path), items=ITEMS[:2], runtime=rt)
    assert run_bench(config(tmp_path, max_tokens=48), items=ITEMS[:2], runtime=rt).ran == 4
    assert run_bench(config(tmp_path, seed=7), items=ITEMS[:2], runtime=rt).ran == 4
    assert run_bench(config(tmp_path, stop=("\n\n",)), items=ITEMS[:2], runtime=rt).ran == 4
    # a new strategy or more questions: only the missing queries run
    assert run_bench(config(tmp_path, strategies=parse_strategies("single,maj@3,ffs@3")),
                     items=ITEMS[:2], runtime=rt).ran == 2
    assert run_bench(config(tmp_path), items=ITEMS, runtime=rt).ran == 4
    assert len(lines(tmp_path)) == 4 * 4 + 2 + 4
    assert len({r["settings_id"] for r in lines(tmp_path)}) == 3  # max_tokens, stop, defaults (seed is a key field)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    rt, _ = fake_runtime()

    def stop_after_three(p: BenchProgress) -> None:
        if p.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(config(tmp_path), items=ITEMS, runtime=rt, on_progress=stop_after_three)
    assert len(lines(tmp_path)) == 3
    seen: list[BenchProgress] = []
    resumed = run_bench(config(tmp_path), items=ITEMS, runtime=rt, on_progress=seen.append)
    assert resumed.ran == 5 and seen[-1].resumed == 3 and seen[-1].done == seen[-1].total == 8
    # the live tallies the progress bar shows equal the final scores
    final = {t.label: (t.correct, t.done) for t in seen[-1].tallies}
    assert final == {label: (sum(r["correct"] for r in recs), 4) for label, recs in resumed.records.items()}


def test_strategies_interleave_per_question_with_rotation(tmp_path: Path) -> None:
    rt, _ = fake_runtime()
    run_bench(config(tmp_path, strategies=parse_strategies("single,maj@3,ffs@3")), items=ITEMS[:3], runtime=rt)
    order = [(r["item_id"], r["strategy"]) for r in lines(tmp_path)]
    assert order == [
        ("q0", "single"), ("q0", "maj@3"), ("q0", "ffs@3"),
        ("q1", "maj@3"), ("q1", "ffs@3"), ("q1", "single"),
        ("q2", "ffs@3"), ("q2", "single"), ("q2", "maj@3"),
    ]


def test_store_skips_a_torn_line_and_appends_on_a_fresh_one(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    store = ResultStore(folder)
    rec = {"dataset": "d", "item_id": "1", "strategy_spec": "single", "model": "m", "seed": 0,
           "settings_id": settings_id({"a": 1}), "correct": True}
    store.add(rec)
    with (folder / RESULTS_FILE).open("a") as fh:
        fh.write('{"dataset": "d", "item_id": "2", "strat')  # a crash mid-write
    reopened = ResultStore(folder)
    assert len(reopened) == 1 and reopened.load_report.skipped_lines == 1
    assert record_key(rec) in reopened
    reopened.add({**rec, "item_id": "2"})
    third = ResultStore(folder)
    assert len(third) == 2 and third.load_report.skipped_lines == 1


def test_settings_id_is_canonical() -> None:
    assert settings_id({"a": 1, "b": [1, 2]}) == settings_id({"b": [1, 2], "a": 1})
    assert settings_id({"a": 1}) != settings_id({"a": 2})
