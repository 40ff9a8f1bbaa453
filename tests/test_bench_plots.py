"""Summaries and plots of bench records: the numbers plotted are the numbers recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgescale.api import Runtime
from edgescale.evals.bench import BenchConfig, parse_strategies, run_bench
from edgescale.evals.bench_report import markdown_table, summarize, summary_dict
from edgescale.evals.datasets import Item
from edgescale.evals.stats import pareto_frontier, wilson
from tests.fake_engine import FakeEngine

pytest.importorskip("matplotlib")
from edgescale.evals.plots import plot_tradeoffs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ITEMS = tuple(Item(id=f"q{i}", question=f"What is {i} + 40?", answer=str(40 + i), kind="number") for i in range(5))


def bench_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = FakeEngine(["The answer is 40.", "Well, well. The answer is 41.", "Some more words. The answer is 41."])
    rt = Runtime(engine, "fake-model")  # type: ignore[arg-type]
    cfg = BenchConfig(dataset="synthetic", strategies=parse_strategies("single,maj@3,ffs@3,short-2@3"),
                      limit=None, max_tokens=64, out=tmp_path / "out")
    return run_bench(cfg, items=ITEMS, runtime=rt)


def test_summary_rows_come_from_the_records(tmp_path: Path) -> None:
    run = bench_run(tmp_path)
    summary = summarize("t", {s.label: s.spec for s in run.config.strategies}, run.records)
    rows = {r.label: r for r in summary.rows}
    assert summary.reference == "maj@3"
    for label, recs in run.records.items():
        row = rows[label]
        correct = sum(r["correct"] for r in recs)
        tokens = [r["result"]["stats"]["total_tokens"] for r in recs]
        assert (row.n, row.correct) == (5, correct)
        assert row.tokens_per_query == pytest.approx(sum(tokens) / 5)
        assert (row.ci.low, row.ci.high) == (wilson(correct, 5).low, wilson(correct, 5).high)
        assert row.tokens_vs_ref == pytest.approx(row.tokens_per_query / rows["maj@3"].tokens_per_query)
    # single and ffs@3 answer 40 (the greedy / shortest sample), maj@3 41 (2 votes of 3),
    # short-2@3 40 (a 1-1 tie between the first two finishers goes to the shortest)
    answers = {label: {r["answer"] for r in recs} for label, recs in run.records.items()}
    assert answers == {"single": {"40"}, "maj@3": {"41"}, "ffs@3": {"40"}, "short-2@3": {"40"}}
    assert [rows[x].correct for x in ("single", "maj@3", "ffs@3", "short-2@3")] == [1, 1, 1, 1]
    assert rows["ffs@3"].tokens_per_query < rows["maj@3"].tokens_per_query
    assert rows["maj@3"].acc_vs_ref is not None and rows["maj@3"].acc_vs_ref.diff == 0.0
    assert rows["single"].acc_vs_ref is not None and rows["single"].acc_vs_ref.diff == 0.0
    table = markdown_table(summary)
    assert table.count("\n") == 2 + 4 and "| maj@3 | 5 | 20.0 [3.6, 62.4] |" in table
    json.dumps(summary_dict(summary))  # JSON-ready (no NaN, no dataclasses)


def test_plots_are_pngs_of_the_recorded_points(tmp_path: Path) -> None:
    run = bench_run(tmp_path)
    summary = summarize("fake on synthetic", {s.label: s.spec for s in run.config.strategies}, run.records)
    plots = plot_tradeoffs(summary, tmp_path / "plots")
    assert [p.path.name for p in plots] == ["accuracy_vs_tokens.png", "accuracy_vs_wall.png"]
    for plot in plots:
        data = plot.path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000
        assert b"IEND" in data[-12:]
        plotted = {p.label: (p.cost, p.accuracy) for p in plot.points}
        assert set(plotted) == set(run.records)
        for label, recs in run.records.items():
            stats = [r["result"]["stats"] for r in recs]
            key = "total_tokens" if plot.axis == "tokens" else "wall_s"
            cost = sum(s[key] for s in stats) / len(stats)
            assert plotted[label] == (pytest.approx(cost), sum(r["correct"] for r in recs) / len(recs))
        assert plot.frontier == pareto_frontier(plot.points)
    # on the tokens axis all four are equally accurate, so the cheapest alone is the frontier
    tokens_plot = plots[0]
    cheapest = min(tokens_plot.points, key=lambda p: p.cost)
    assert [p.label for p in tokens_plot.frontier] == [cheapest.label]
