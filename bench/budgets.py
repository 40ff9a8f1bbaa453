"""Budgets: auto vs fixed strategies under the same deadline and memory budget.

A thin call of ``edgescale.evals.bench``: GSM8K and ARC-Easy questions mixed,
every strategy interleaved per question, for each (memory budget, deadline).
Per cell: accuracy (95% Wilson interval), wall time p50 / p95, peak RSS of the
query, whether the strategy met the deadline (p95 <= deadline + 10%) and the
memory budget (every query's peak RSS <= budget). Target (issue 4): at every
deadline ``auto`` is at least as accurate as the best fixed strategy that also
meets the deadline, and no run breaks its budget.

    python bench/budgets.py [--limit 50] [--deadlines 1,2,5] [--memories 300MB,1GB]
        [--strategies auto,single,maj@8,ffs@8,short-3@8,adaptive:max=8,early-exit]
        [--max-tokens 192] [--threads 1] [--out bench_out/budgets]

Records are kept under --out (resumable: a rerun reads finished queries back).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STRATEGIES = "auto,single,maj@8,ffs@8,short-3@8,adaptive:max=8,early-exit"
SLACK = 1.10  # the deadline's allowance: p95 within deadline + 10%


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--datasets", default="gsm8k,arc-easy")
    ap.add_argument("--limit", type=int, default=50, help="questions per dataset")
    ap.add_argument("--deadlines", default="1,2,5", help="seconds")
    ap.add_argument("--memories", default="300MB,1GB")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/budgets"))
    return ap.parse_args(argv)


def _cell(records: Sequence[dict[str, Any]], deadline: float, memory: int) -> dict[str, Any]:
    from edgescale.evals.stats import percentile, wilson

    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    walls = [float(r["result"]["stats"]["wall_s"]) for r in records]
    rss = [int(r["rss_peak_bytes"]) for r in records]
    ci = wilson(correct, n)
    p95 = percentile(walls, 95)
    return {
        "n": n, "accuracy": correct / n if n else float("nan"), "ci": (ci.low, ci.high),
        "p50": percentile(walls, 50), "p95": p95, "rss_max": max(rss) if rss else 0,
        "meets_deadline": p95 <= deadline * SLACK, "meets_memory": all(x <= memory for x in rss),
        "tokens": sum(r["result"]["stats"]["generated_tokens"] + r["result"]["stats"]["probe_tokens"]
                      for r in records) / max(n, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from rich.console import Console
    from rich.table import Table

    from edgescale.api import Runtime
    from edgescale.evals.bench import BenchConfig, load_items, parse_strategies, run_bench
    from edgescale.settings import parse_duration, parse_size

    strategies = parse_strategies(args.strategies)
    deadlines = [parse_duration(d) for d in args.deadlines.split(",")]
    memories = [(m, parse_size(m)) for m in args.memories.split(",")]
    console = Console(stderr=False)
    failures: list[str] = []
    with Runtime.load(args.model, threads=args.threads) as rt:
        rt.notify = lambda msg: print(msg, file=sys.stderr)
        for mem_label, mem in memories:
            for deadline in deadlines:
                assert deadline is not None and mem is not None
                per: dict[str, list[dict[str, Any]]] = {s.label: [] for s in strategies}
                for ds in args.datasets.split(","):
                    cfg = BenchConfig(
                        dataset=ds, strategies=strategies, limit=args.limit, model=args.model,
                        threads=args.threads, max_tokens=args.max_tokens, seed=args.seed, deadline_s=deadline,
                        memory_bytes=mem, out=args.out / f"{ds}-{mem_label}-{deadline:g}s",
                    )
                    run = run_bench(cfg, items=load_items(cfg), runtime=rt)
                    for label, recs in run.records.items():
                        per[label].extend(recs)
                cells = {label: _cell(recs, deadline, mem) for label, recs in per.items()}
                table = Table(title=f"memory {mem_label}, deadline {deadline:g}s "
                                    f"({sum(c['n'] for c in cells.values()) // len(cells)} questions)",
                              title_justify="left")
                for col in ("strategy", "acc %", "95% CI", "tokens/q", "p50 s", "p95 s", "max RSS MB",
                            "deadline", "memory"):
                    table.add_column(col)
                for label, c in cells.items():
                    table.add_row(label, f"{100 * c['accuracy']:.1f}",
                                  f"{100 * c['ci'][0]:.0f}-{100 * c['ci'][1]:.0f}", f"{c['tokens']:.0f}",
                                  f"{c['p50']:.2f}", f"{c['p95']:.2f}", f"{c['rss_max'] / 2**20:.0f}",
                                  "met" if c["meets_deadline"] else "MISSED",
                                  "met" if c["meets_memory"] else "BROKEN")
                console.print(table)
                fixed = {k: c for k, c in cells.items() if k != "auto" and c["meets_deadline"]}
                if "auto" in cells:
                    best = max(fixed.items(), key=lambda kv: kv[1]["accuracy"], default=None)
                    auto = cells["auto"]
                    if best is not None:
                        ok = auto["accuracy"] >= best[1]["accuracy"]
                        console.print(f"auto {100 * auto['accuracy']:.1f}% vs best fixed strategy that met the "
                                      f"deadline ({best[0]}) {100 * best[1]['accuracy']:.1f}%: "
                                      f"{'target met' if ok else 'TARGET MISSED'}")
                        if not ok:
                            failures.append(f"{mem_label}/{deadline:g}s: auto below {best[0]}")
                broken = [k for k, c in cells.items() if not c["meets_memory"]]
                if broken:
                    failures.append(f"{mem_label}/{deadline:g}s: memory broken by {', '.join(broken)}")
    console.print("all targets met" if not failures else "missed: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
