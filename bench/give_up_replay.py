"""Replay DeepConf online's give-up rule at several thresholds on stored bench records.

Online DeepConf (``conf@K:online=1``) gives up, with ``give_up=S``, right after its warm-up
when the warm-up's distinct answers are at least S of its answered samples; it then answers
with the warm-up's weighted vote. That decision reads only the warm-up, which a run without
give-up records whole, so every S can be scored from one stored run: accuracy, tokens, and
how many queries gave up. Paired with a give-up run (``--check SPEC``), the replay at that
run's S must agree with it. No model is loaded.

    python bench/give_up_replay.py /tmp/b28/arith-1d-smollm2 --spec "conf@8:online=1,temp=0.4" \
        --check "conf@8:online=1,temp=0.4,give_up=0.75" --baseline maj@8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence


def load(store: Path, label: Callable[[dict[str, Any]], str] = lambda r: r["strategy"]
         ) -> dict[str, dict[str, dict[str, Any]]]:
    """label (the strategy's, by default) -> item id -> record (the last one written)."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for line in (store / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[label(r)][r["item_id"]] = r
    return out


def weighted_answer(samples: Sequence[dict[str, Any]]) -> tuple[str | None, float]:
    """DeepConf's weighted vote over stored samples (ties to the first to finish) and the
    leader's share of the weight."""
    weight: dict[str, float] = defaultdict(float)
    first: dict[str, float] = {}
    for s in samples:
        if s["answer"] is not None:
            weight[s["answer"]] += s["confidence"] or 0.0
            first[s["answer"]] = min(first.get(s["answer"], 1e18), s["finished_at_s"] or 0.0)
    if not weight:
        return None, 0.0
    best = max(weight.values())
    answer = min((a for a in weight if abs(weight[a] - best) <= 1e-12 * max(1.0, best)), key=first.__getitem__)
    total = sum(weight.values())
    return answer, (best / total if total > 0 else 0.0)


def replay(record: dict[str, Any], give_up: float, warmup: int) -> tuple[str | None, int, bool]:
    """(answer, generated tokens, gave up) of the record's query under ``give_up``."""
    res = record["result"]
    warm = [s for s in res["samples"] if s["index"] < warmup]
    answered = [s for s in warm if s["answer"] is not None]
    if give_up <= 0 or len(answered) < 2 or len({s["answer"] for s in answered}) < give_up * len(answered):
        return res["answer"], res["stats"]["generated_tokens"], False
    answer, _ = weighted_answer(answered)
    return answer, sum(s["n_tokens"] for s in warm), True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--spec", default="conf@8:online=1,temp=0.4", help="the run without give-up")
    ap.add_argument("--check", default=None, help="a run with give-up, to check the replay against")
    ap.add_argument("--baseline", default="maj@8")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--thresholds", default="0,0.5,0.75,1.0")
    args = ap.parse_args()
    runs = load(args.store)
    base = runs[args.spec]
    ids = sorted(set(base) & set(runs[args.baseline]), key=lambda i: int(i.rsplit("-", 1)[1]))
    maj_tokens = sum(runs[args.baseline][i]["result"]["stats"]["generated_tokens"] for i in ids)
    print(f"{args.store.name}: {len(ids)} questions; {args.spec} replayed; tokens against {args.baseline}")
    print("| give_up | accuracy % | tokens vs " + args.baseline + " | gave up |\n|---|---:|---:|---:|")
    for t in (float(x) for x in args.thresholds.split(",")):
        out = [replay(base[i], t, args.warmup) for i in ids]
        right = sum(a == base[i]["gold"] for (a, _, _), i in zip(out, ids))
        tokens = sum(n for _, n, _ in out)
        print(f"| {t:g} | {100 * right / len(ids):.1f} | {tokens / maj_tokens:.2f}x | {sum(g for _, _, g in out)} |")
    if args.check and args.check in runs:
        other = runs[args.check]
        t = float(args.check.split("give_up=")[1].split(",")[0])
        same = [i for i in ids if i in other]
        agree = sum((other[i]["result"]["stop_reason"] == "gave-up") == replay(base[i], t, args.warmup)[2]
                    for i in same)
        print(f"check: the replay at give_up={t:g} and the run {args.check!r} agree on giving up for "
              f"{agree} of {len(same)} questions (the rest: batched decoding is not bitwise reproducible)")
    baseline_right = sum(runs[args.baseline][i]["correct"] for i in ids)
    print(f"{args.baseline}: {100 * baseline_right / len(ids):.1f}%")


if __name__ == "__main__":
    main()
