"""Trade-off plots: accuracy against generated tokens and against wall time per query.

One point per strategy (with its 95% Wilson interval as an error bar); the
Pareto frontier (no other strategy is both cheaper and at least as
accurate) is drawn as a step line through its points. matplotlib is an
optional dependency (the ``bench`` extra), imported only here and only when
a plot is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgescale.errors import UsageError
from edgescale.evals.bench_report import StrategyRow, Summary
from edgescale.evals.stats import Point, pareto_frontier

INSTALL = "pip install 'edgescale[bench]'"
MARKERS = "os^Dv<>pP*X"  # one per point, cycling; with the 10 default colours no two points look alike
AXES = (
    ("tokens", "generated tokens per query (incl. probes, log scale)", "accuracy_vs_tokens.png"),
    ("wall", "mean wall time per query, s (log scale)", "accuracy_vs_wall.png"),
)


@dataclass(frozen=True)
class Plot:
    path: Path
    axis: str  # "tokens" or "wall"
    points: tuple[Point, ...]  # what was plotted, one per strategy
    frontier: tuple[Point, ...]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"plots need matplotlib; run: {INSTALL}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def points_for(rows: Sequence[StrategyRow], axis: str) -> tuple[Point, ...]:
    """(cost, accuracy) of each strategy that has records; cost is mean tokens or mean wall s."""
    out = []
    for row in rows:
        if row.n == 0:
            continue
        cost = row.tokens_per_query if axis == "tokens" else row.wall_mean_s
        out.append(Point(row.label, cost, row.accuracy))
    return tuple(out)


def _draw(plt: Any, summary: Summary, axis: str, xlabel: str, path: Path) -> Plot:
    rows = {row.label: row for row in summary.rows}
    points = points_for(summary.rows, axis)
    frontier = pareto_frontier(points)
    fig, ax = plt.subplots(figsize=(8.2, 4.6), dpi=120)
    try:
        for i, p in enumerate(points):  # named in the legend: text labels collide when costs are close
            row = rows[p.label]
            err = [[100 * max(0.0, p.accuracy - row.ci.low)], [100 * max(0.0, row.ci.high - p.accuracy)]]
            # 10 colours cycle; 11 markers with them keep every (colour, marker) pair distinct to 110 rows
            ax.errorbar([max(p.cost, 1e-3)], [100 * p.accuracy], yerr=err, fmt=MARKERS[i % len(MARKERS)],
                        capsize=3, alpha=0.85, label=p.label)
        if frontier:
            right = max(max(p.cost for p in points), frontier[-1].cost) * 1.15
            xs = [max(p.cost, 1e-3) for p in frontier] + [right]
            ys = [100 * p.accuracy for p in frontier] + [100 * frontier[-1].accuracy]
            ax.step(xs, ys, where="post", color="black", linewidth=1.0, linestyle="--", label="Pareto frontier")
            ax.scatter(xs[:-1], ys[:-1], s=140, facecolors="none", edgecolors="black", linewidths=1.0)
        if points:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        ax.set_xscale("log")
        ticks = plt.FuncFormatter(lambda x, _pos: f"{x:g}")
        ax.xaxis.set_major_formatter(ticks)
        ax.xaxis.set_minor_formatter(ticks)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy, % (95% Wilson CI)")
        fig.suptitle(summary.title, fontsize=9)  # over the figure: a long title is wider than the axes
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return Plot(path, axis, points, frontier)


def plot_tradeoffs(summary: Summary, folder: Path, prefix: str = "") -> tuple[Plot, ...]:
    """Write ``accuracy_vs_tokens.png`` and ``accuracy_vs_wall.png`` into ``folder``; return what was drawn."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    return tuple(_draw(plt, summary, axis, label, folder / f"{prefix}{name}") for axis, label, name in AXES)


def require_matplotlib() -> None:
    """Fail early (before hours of benchmarking) when plots were asked for but cannot be drawn."""
    _pyplot()
