"""Strategies side by side: accuracy, tokens and wall time per query, per model and dataset.

A thin call of ``edgescale.evals.bench``: by default 50 GSM8K test and 50
ARC-Easy questions with the default model (SmolLM2-135M-Instruct) and Gemma
3 270M, every strategy interleaved per question, then one table with a
column group per (model, dataset) and a check of the efficiency targets:

* ffs@8 and short-3@8 spend <= 60% of maj@8's generated tokens;
* adaptive reaches maj@8's accuracy (within 2 points) with <= 50% of its tokens.

Each (model, dataset) uses the settings of ``edgescale.evals.bench_profiles``
(the ones docs/BENCHMARKS.md documents) and writes its records under
``--out/<model>-<dataset>``, the folders the full runs use: questions already
run there are read back, not run again.

    python bench/strategies.py [--limit 50] [--models smollm2-135m,gemma3-270m]
        [--datasets gsm8k,arc-easy] [--out bench_out] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from edgescale.evals.bench_report import StrategyRow, Summary

STRATEGIES = "single,maj@8,ffs@8,short-3@8,adaptive:max=8,early-exit,baseline@8"
REFERENCE = "maj@8"
TARGETS = (  # (strategy label, max token ratio to maj@8, max accuracy shortfall in points or None)
    ("ffs@8", 0.60, None),
    ("short-3@8", 0.60, None),
    ("adaptive:max=8", 0.50, 2.0),
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--datasets", default="gsm8k,arc-easy")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    return ap.parse_args(argv)


def _fmt_acc(row: StrategyRow) -> str:
    return "-" if math.isnan(row.accuracy) else f"{100 * row.accuracy:.0f}"


def _table(columns: list[tuple[str, Summary]], labels: Sequence[str]) -> Table:
    from rich.table import Table

    table = Table(title="accuracy % | generated tokens/query | wall s/query p50 | p95", title_justify="left")
    table.add_column("strategy", no_wrap=True)
    for name, _ in columns:
        for part in ("acc", "tok", "p50", "p95"):
            table.add_column(f"{name}\n{part}", justify="right")
    for label in labels:
        cells = [label]
        for _, summary in columns:
            row = next(r for r in summary.rows if r.label == label)
            cells += [_fmt_acc(row), f"{row.tokens_per_query:.0f}", f"{row.wall_p50_s:.1f}", f"{row.wall_p95_s:.1f}"]
        table.add_row(*cells)
    return table


def _targets(columns: list[tuple[str, Summary]]) -> list[str]:
    lines = []
    for name, summary in columns:
        rows = {r.label: r for r in summary.rows}
        ref = rows.get(REFERENCE)
        if ref is None:
            continue
        for label, max_ratio, max_drop in TARGETS:
            row = rows.get(label)
            if row is None or row.tokens_vs_ref is None:
                continue
            ok = row.tokens_vs_ref <= max_ratio
            text = f"{name}: {label} tokens {row.tokens_vs_ref:.2f}x {REFERENCE} (target <= {max_ratio:.2f})"
            if max_drop is not None and row.acc_vs_ref is not None:
                d = row.acc_vs_ref
                ok = ok and 100 * d.diff >= -max_drop
                ci = ("no interval" if math.isnan(d.low)
                      else f"paired 95% CI [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
                text += (f", accuracy {100 * row.accuracy:.1f}% vs {100 * ref.accuracy:.1f}% "
                         f"(diff {100 * d.diff:+.1f} pts, {ci}; target >= -{max_drop:g})")
            lines.append(("met      " if ok else "NOT MET  ") + text)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from rich.console import Console

    from edgescale.errors import EdgescaleError
    from edgescale.evals.bench import BenchConfig, BenchProgress, parse_strategies, run_bench
    from edgescale.evals.bench_profiles import profile_for
    from edgescale.evals.bench_report import summarize

    err = Console(stderr=True)
    columns: list[tuple[str, Summary]] = []
    try:
        strategies = parse_strategies(args.strategies)
        for model in args.models.split(","):
            for dataset in args.datasets.split(","):
                profile = profile_for(model, dataset)
                cfg = BenchConfig(
                    dataset=dataset, strategies=strategies, limit=args.limit, model=model, threads=args.threads,
                    seed=args.seed, out=args.out / f"{model}-{dataset}", **profile.options(),
                )

                def report(p: BenchProgress, name: str = f"{model}/{dataset}") -> None:
                    fresh = p.done - p.resumed  # stored records are read back silently
                    if p.done == p.total or (fresh > 0 and p.done % len(strategies) == 0):
                        err.print(f"{name}: {p.done}/{p.total} queries ({p.resumed} from the store)")

                run = run_bench(cfg, on_progress=report)
                summary = summarize(f"{model} {dataset}", {s.label: s.spec for s in strategies}, run.records)
                columns.append((f"{model}\n{dataset}", summary))
    except EdgescaleError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    out = Console(file=sys.stdout, width=250)
    out.print(_table(columns, [s.label for s in strategies]))
    for line in _targets(columns):
        out.print(line.replace("\n", " "), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
