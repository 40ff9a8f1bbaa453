"""How each strategy's samples voted, read back from an ``edgescale bench --out`` folder.

Why a sampling strategy saves or does not is in its records, not in the
accuracy table: how many samples a query drew, why it stopped (``k-max-reached``
means the rule never became confident), how strongly the samples agreed (the
leading answer's share of the answered votes) and how many tokens were cut off
when it stopped. Nothing is run; the store is only read.

    python bench/votes.py bench_out/add1d-fit-smollm2 [--only adaptive,maj@8]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VoteRow:
    spec: str
    n: int
    accuracy: float
    samples: float  # samples drawn per query
    top_share: float  # mean share of the leading answer among the answered votes
    tokens: float  # generated tokens per query
    cancelled: float  # of which cut off when the query stopped
    stops: dict[str, int]


def vote_rows(records: Iterable[dict[str, Any]], only: Sequence[str] = ()) -> list[VoteRow]:
    """One row per strategy spec (in first-seen order), restricted to specs starting with ``only``."""
    by_spec: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if not only or str(r["strategy_spec"]).startswith(tuple(only)):
            by_spec[str(r["strategy_spec"])].append(r)
    rows = []
    for spec, rs in by_spec.items():
        shares = [max(v.values()) / sum(v.values()) for v in (r["result"]["votes"] for r in rs) if sum(v.values())]
        rows.append(VoteRow(
            spec=spec, n=len(rs),
            accuracy=sum(bool(r["correct"]) for r in rs) / len(rs),
            samples=sum(len(r["result"]["samples"]) for r in rs) / len(rs),
            top_share=sum(shares) / len(shares) if shares else 0.0,
            tokens=sum(r["result"]["stats"]["generated_tokens"] for r in rs) / len(rs),
            cancelled=sum(r["result"]["stats"].get("cancelled_tokens", 0) for r in rs) / len(rs),
            stops=dict(Counter(str(r["result"]["stop_reason"]) for r in rs).most_common()),
        ))
    return rows


def markdown(rows: Sequence[VoteRow]) -> str:
    lines = ["| strategy | n | accuracy % | samples/query | top-answer share | tokens/query | cancelled | stops |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        stops = ", ".join(f"{k} {v}" for k, v in r.stops.items())
        lines.append(f"| {r.spec} | {r.n} | {100 * r.accuracy:.1f} | {r.samples:.2f} | {r.top_share:.2f} | "
                     f"{r.tokens:.1f} | {r.cancelled:.1f} | {stops} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="an `edgescale bench --out` folder (holds results.jsonl)")
    ap.add_argument("--only", default="", help="comma-separated spec prefixes to keep (default: all)")
    args = ap.parse_args(argv)
    from edgescale.errors import UsageError
    from edgescale.evals.store import RESULTS_FILE, ResultStore

    if not (args.out / RESULTS_FILE).is_file():
        print(f"error: no {RESULTS_FILE} in {args.out}", file=sys.stderr)
        return 2
    try:
        store = ResultStore(args.out)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    only = [s for s in args.only.split(",") if s]
    print(markdown(vote_rows(store.records(), only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
