"""Free answers against constrained answer tails (``--answer-mode tail``), per strategy.

    python bench/answer_tail.py [--models smollm2-135m] [--datasets arith-1d,arc-easy]
                                [--limit 100] [-n 128] [--strategies single,maj@8,ffs@8,...]
                                [--out bench-out/answer-tail]

For each model and dataset, ``edgescale bench`` runs the strategies twice into resumable
stores under ``--out`` (``MODEL-DATASET-free`` and ``-tail``; a rerun finishes what is
missing). Prints, per strategy: the share of samples that ran to their end with no answer,
accuracy with its 95% interval and tokens per query, free and tail, and the paired accuracy
difference (tail - free, same questions, 95% interval); draws ``MODEL-DATASET.png``
(accuracy against tokens, an arrow from free to tail per strategy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DEFAULT_STRATEGIES = "single,maj@8,ffs@8,short-3@8,conf@8:online=1,temp=0.4"


def run(model: str, dataset: str, mode: str, args: argparse.Namespace) -> Path:
    out = args.out / f"{model}-{dataset}-{mode}"
    cmd = [sys.executable, "-m", "edgescale.cli", "bench", "-m", model, "-d", dataset, "--limit", str(args.limit),
           "-n", str(args.max_tokens), "-S", args.strategies, "--answer-mode", mode, "--out", str(out), "--json"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "EDGESCALE_THREADS": str(args.threads)})
    return out


def records(store: Path) -> dict[str, list[dict[str, Any]]]:
    """The store's records by strategy label, the first of each (question, strategy)."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    with open(store / "results.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            key = (str(rec["item_id"]), rec["strategy"])
            if key not in seen:
                seen.add(key)
                by_label[rec["strategy"]].append(rec)
    return by_label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m")
    ap.add_argument("--datasets", default="arith-1d,arc-easy")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-out/answer-tail"))
    ap.add_argument("--no-run", action="store_true", help="only read the stores already under --out")
    args = ap.parse_args()

    import matplotlib

    from edgescale.evals.bench import parse_strategies
    from edgescale.evals.bench_report import summarize

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from edgescale.evals.stats import paired_difference

    labels = [s.label for s in parse_strategies(args.strategies)]
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            stores = {mode: args.out / f"{model}-{dataset}-{mode}" if args.no_run else run(model, dataset, mode, args)
                      for mode in ("free", "tail")}
            recs = {mode: records(path) for mode, path in stores.items()}
            rows = {mode: {r.label: r for r in summarize("", {lb: lb for lb in labels}, recs[mode]).rows}
                    for mode in recs}
            print(f"\n### {model} on {dataset} ({args.limit} questions, -n {args.max_tokens})\n")
            print("| strategy | no answer % free -> tail | accuracy % free [95% CI] | accuracy % tail [95% CI] "
                  "| tail - free (pts) [95% CI] | tokens/query free -> tail |")
            print("|---|---|---|---|---|---|")
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label in labels:
                f, t = rows["free"].get(label), rows["tail"].get(label)
                if f is None or t is None or not f.n or not t.n:
                    continue
                free_ok = {r["item_id"]: float(r["correct"]) for r in recs["free"][label]}
                tail_ok = {r["item_id"]: float(r["correct"]) for r in recs["tail"][label]}
                shared = [i for i in free_ok if i in tail_ok]
                d = paired_difference([tail_ok[i] for i in shared], [free_ok[i] for i in shared])
                print(f"| {label} | {100 * f.no_answer:.1f} -> {100 * t.no_answer:.1f} "
                      f"| {100 * f.accuracy:.0f} [{100 * f.ci.low:.0f}, {100 * f.ci.high:.0f}] "
                      f"| {100 * t.accuracy:.0f} [{100 * t.ci.low:.0f}, {100 * t.ci.high:.0f}] "
                      f"| {100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] "
                      f"| {f.tokens_per_query:.0f} -> {t.tokens_per_query:.0f} |", flush=True)
                ax.annotate("", xy=(t.tokens_per_query, 100 * t.accuracy),
                            xytext=(f.tokens_per_query, 100 * f.accuracy),
                            arrowprops={"arrowstyle": "->", "alpha": 0.6})
                ax.scatter([f.tokens_per_query], [100 * f.accuracy], marker="o", color="tab:gray")
                ax.scatter([t.tokens_per_query], [100 * t.accuracy], marker="^", color="tab:blue")
                ax.text(t.tokens_per_query, 100 * t.accuracy + 1, label, fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("tokens per query (log scale)")
            ax.set_ylabel("accuracy %")
            ax.set_title(f"{model} on {dataset}: free answers (o) -> answer tail (^)")
            path = args.out / f"{model}-{dataset}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=120)
            plt.close(fig)
            print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
