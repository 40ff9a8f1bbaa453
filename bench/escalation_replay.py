"""Replay `auto`'s DeepConf escalation at other sizes on a stored run of the full escalation.

`auto` escalates an unsure greedy answer to online DeepConf (``conf@K:online=1``): a warm-up
of W samples, then the rest up to K, each stopped when its latest window falls below the
warm-up's threshold, the query stopped at a weighted consensus of 0.95. This script takes a
stored ``auto`` run whose escalation ran without give-up (warm-up 4, K 8: a policy file such
as ``nogiveup``, see docs/BENCHMARKS.md) and scores, without loading a model:

- warm-up W and cap K (samples 1..W, then W+1..K in the order they finished);
- whether stage 1's greedy sample votes in the consensus and the final vote;
- the give-up rule (the W warm-up answers all differ: stage 1's answer stands);
- certainty tiers: one (W, K) at stage-1 certainty >= a cut, another below it (the
  escalation sized by stage 1's evidence).

A replayed sample's tokens are those it generated in the stored run (a later sample may have
been cut by that run's consensus, so the replay can only under-count where it goes on
longer). The row replaying the stored run itself checks the method: its accuracy should be
the run's.

    python bench/escalation_replay.py STORE --spec auto:policy=nogiveup --baseline maj@8 \
        [--baseline-store STORE2]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from give_up_replay import load, weighted_answer

CONSENSUS = 0.95


@dataclass(frozen=True)
class Size:
    warmup: int
    cap: int  # 0: no escalation (stage 1's answer stands)

    def label(self) -> str:
        return "none" if self.cap == 0 else f"W{self.warmup}K{self.cap}"


def escalate(record: dict[str, Any], size: Size, stage1_votes: bool, give_up: bool) -> tuple[str | None, int]:
    """(answer, generated tokens) of one stored auto query under another escalation."""
    res = record["result"]
    by_index = {s["index"]: s for s in res["samples"]}
    s0 = by_index[0]
    tokens = s0["n_tokens"]
    if not res["stop_reason"].startswith("escalated") or size.cap == 0:
        return s0["answer"], tokens
    warm = [by_index[i] for i in range(1, size.warmup + 1) if i in by_index]
    tokens += sum(s["n_tokens"] for s in warm)
    answers = [s["answer"] for s in warm if s["answer"] is not None]
    if give_up and len(answers) >= 2 and len(set(answers)) == len(answers):
        return s0["answer"], tokens
    pool = warm + ([s0] if stage1_votes else [])
    answer, share = weighted_answer(pool)
    if share < CONSENSUS:
        rest = [by_index[i] for i in range(size.warmup + 1, size.cap + 1) if i in by_index]
        for s in sorted(rest, key=lambda s: s["finished_at_s"] or float("inf")):
            tokens += s["n_tokens"]
            if s["finish_reason"] in ("stop", "length"):
                pool.append(s)
                answer, share = weighted_answer(pool)
                if share >= CONSENSUS:
                    break
    return (answer if answer is not None else s0["answer"]), tokens


def certainty(record: dict[str, Any]) -> float:
    return float(record["result"]["plan"].get("stage1_certainty") or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--spec", default="auto:policy=nogiveup", help="the stored auto run (a prefix of its spec)")
    ap.add_argument("--baseline", default="maj@8")
    ap.add_argument("--baseline-store", type=Path, default=None, help="where the baseline ran (default: STORE)")
    ap.add_argument("--cuts", default="0.5,0.8", help="certainty cuts for the tiers")
    args = ap.parse_args()
    records = {i: r for spec, recs in load(args.store, label=lambda r: r["strategy_spec"]).items()
               if spec.startswith(args.spec) for i, r in recs.items()}
    base = load(args.baseline_store or args.store).get(args.baseline, {})
    if not records or not base:
        raise SystemExit(f"error: no {args.spec!r} or {args.baseline!r} records in the store(s)")
    ids = sorted(set(records) & set(base))
    base_tokens = sum(base[i]["result"]["stats"]["generated_tokens"] for i in ids) / len(ids)
    n = len(ids)
    stored = sum(bool(records[i]["correct"]) for i in ids)
    print(f"{args.store} {args.spec}: {n} questions, stored run {stored}/{n} right, "
          f"{args.baseline} {base_tokens:.1f} tokens/question")
    rows: list[tuple[str, list[tuple[float, Size]]]] = [
        ("uniform " + s.label(), [(0.0, s)]) for s in (Size(4, 8), Size(4, 6), Size(3, 8), Size(2, 8), Size(2, 4))]
    for cut in (float(c) for c in args.cuts.split(",")):
        for hi, lo in ((Size(2, 8), Size(4, 8)), (Size(4, 8), Size(2, 8)), (Size(0, 0), Size(4, 8)),
                       (Size(4, 8), Size(0, 0))):
            rows.append((f">= {cut:g}: {hi.label()}, below: {lo.label()}", [(cut, hi), (0.0, lo)]))
    print(f"| escalation | stage 1 votes | give-up | right | tokens/question | tokens vs {args.baseline} |")
    print("|---|---|---|---:|---:|---:|")
    for name, tiers in rows:
        for votes in (False, True):
            for give_up in (False, True):
                right, tokens = 0, 0
                for i in ids:
                    r = records[i]
                    size = next(s for floor, s in tiers if certainty(r) >= floor)
                    answer, t = escalate(r, size, votes, give_up)
                    right += answer is not None and answer == r["gold"]
                    tokens += t
                print(f"| {name} | {'yes' if votes else 'no'} | {'yes' if give_up else 'no'} | {right} | "
                      f"{tokens / n:.1f} | {tokens / n / base_tokens:.2f}x |")


if __name__ == "__main__":
    main()
