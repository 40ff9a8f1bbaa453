"""The shared decode loop, measured side by side in one run (SmolLM2, 2 threads by default).

1. batch throughput: GSM8K questions, single greedy, ``--parallel 8`` vs ``--parallel 1``
   (queries/s; target >= 1.5x), with ``--parallel 8`` in each KV layout (``--layouts``:
   one unified cache, one stream per sequence, the exact streams of ``--deterministic``);
2. the same with maj@8 per question (each query is already a batch of 8: 64 sequences);
3. the prefix cache: GSM8K 3-shot prompts one after another, time to first token
   (from arrival) with the cache vs without (target >= 3x lower), and the whole run;
4. deadlines under load: 8 queries arriving together with a 2 s deadline: the share
   answered within deadline + 10% (target >= 95%), accuracy and tokens against the
   same queries one by one;
5. the queue: 16 queries with mixed deadlines (a third 1.5 s, the rest 20 s), 4
   running at once: deadlines met under FIFO and under EDF;
6. the prompt-chunk policy: four queries decoding while a 3-shot prompt is read in
   chunks of 32, 128 or 512 tokens: the others' step time during the reading;
7. eight maj@8 queries on short arithmetic prompts (arith-1d, 48 tokens), ``--parallel 8``
   in each layout vs ``--parallel 1`` (target >= 1.5x), and whether each layout's answers
   are the ones the queries give one at a time (their samples' tokens, bitwise).

Variants of one comparison run back to back on the same engine, in alternating
order over ``--rounds``. Every run is bounded: fixed query counts, no open-ended load.

    python bench/scheduler.py [--questions 64] [--max-tokens 128] [--rounds 1] [--only 1,2,3,4,5,6,7]
                              [--model PATH|NAME|NAME:TYPE] [--layouts unified,streams,exact]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import replace
from typing import Any, Sequence

from edgescale.api import Runtime
from edgescale.evals.datasets import load, prompt_for
from edgescale.loader import runnable_model
from edgescale.runtime.llama_engine import LlamaCppEngine
from edgescale.scheduler.config import SchedulerConfig
from edgescale.strategies.planner import Budget

BASE = SchedulerConfig(memory_bytes=1024 * 2**20, max_running=1)


def run_set(engine: Any, prompts: Sequence[str], golds: Sequence[str], config: SchedulerConfig,
            sequential: bool = False, **ask: Any) -> dict[str, float]:
    """Submit every prompt at once (at most ``config.max_running`` decode together), or
    ``sequential``: each after the previous one finished."""
    rt = Runtime(engine, "smollm2-135m", scheduler=config)
    try:
        t0 = time.perf_counter()
        if sequential:
            results = [rt.ask(p, **ask) for p in prompts]
        else:
            reqs = [rt.request(p, **ask) for p in prompts]
            results = [f.result() for f in rt.scheduler.submit_many(reqs)]
        wall = time.perf_counter() - t0
        stats = rt.scheduler.stats
    finally:
        rt.scheduler.close()
    ttft = [r.stats.queue_s + (r.stats.ttft_s or r.stats.wall_s) for r in results]
    return {
        "wall": wall, "qps": len(prompts) / wall,
        "accuracy": sum(r.answer == g for r, g in zip(results, golds)) / len(golds),
        "tokens": sum(r.stats.total_tokens for r in results) / len(results),
        "ttft_p50": statistics.median(ttft), "wall_per_query": [r.stats.wall_s for r in results],
        "samples": [tuple((s.text, s.n_tokens) for s in r.samples) for r in results],
        "prompt_read": stats.prompt_tokens_read, "prompt_cached": stats.prompt_tokens_cached,
        "deadline_s": ask.get("budget").deadline_s if ask.get("budget") else None,  # type: ignore[union-attr]
    }


def parallel_vs_one(engine: Any, name: str, prompts: Sequence[str], golds: Sequence[str],
                    layouts: Sequence[str], rounds: int, **ask: Any) -> None:
    """``--parallel 1`` against ``--parallel 8`` in each KV layout: queries/s against parallel 1
    in one unified cache (what --parallel 1 runs in), and how many queries answered with the
    very tokens they give one at a time in the same layout."""
    variants = {}
    for layout in layouts:
        for lanes in (1, 8):
            variants[f"parallel {lanes}, {layout}"] = lambda lanes=lanes, layout=layout: run_set(
                engine, prompts, golds, replace(BASE, max_running=lanes, expect_running=lanes, kv_layout=layout),
                **ask)
    runs = side_by_side(f"{name}: --parallel 8 vs 1", variants, rounds)
    one = med(runs[f"parallel 1, {layouts[0]}"], "qps")
    for layout in layouts:
        alone, together = runs[f"parallel 1, {layout}"], runs[f"parallel 8, {layout}"]
        same = sum(a == b for a, b in zip(together[-1]["samples"], alone[-1]["samples"]))
        print(f"   {layout}: parallel 1 {med(alone, 'qps'):.3f} queries/s, parallel 8 {med(together, 'qps'):.3f}: "
              f"{med(together, 'qps') / one:.2f}x parallel 1 in {layouts[0]} (target >= 1.5x); accuracy "
              f"{med(alone, 'accuracy'):.0%} / {med(together, 'accuracy'):.0%}; {same}/{len(prompts)} queries' "
              "tokens as one at a time")


def side_by_side(name: str, variants: dict[str, Any], rounds: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    keys = list(variants)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            out[k].append(variants[k]())
    print(f"-- {name}")
    return out


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(float(x[key]) for x in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="1,2,3,4,5,6,7")
    ap.add_argument("--model", default="smollm2-135m", help="GGUF path, catalog name, or NAME:TYPE (a copy)")
    ap.add_argument("--layouts", default="unified,streams,exact", help="KV layouts to run --parallel 8 in")
    args = ap.parse_args()
    only = {int(x) for x in args.only.split(",")}
    layouts = args.layouts.split(",")
    engine = LlamaCppEngine.load(runnable_model(args.model), n_threads=args.threads)
    items = load("gsm8k", limit=max(args.questions, 32))
    zero = [prompt_for(it, "zero-shot") for it in items[: args.questions]]
    golds = [it.answer for it in items[: args.questions]]
    ask = dict(answer="number", max_tokens=args.max_tokens, seed=1)
    print(f"{engine.info.path.name}, {args.threads} threads, {args.questions} GSM8K questions, "
          f"max {args.max_tokens} new tokens, {args.rounds} round(s)")

    for n, spec in ((1, "single"), (2, "maj@8")):
        if n in only:
            parallel_vs_one(engine, f"{n}. batch throughput, {spec}, GSM8K", zero, golds, layouts, args.rounds,
                            strategy=spec, **ask)
    if 7 in only:
        arith = load("arith-1d", limit=8)
        parallel_vs_one(engine, "7. eight maj@8 queries, short arithmetic prompts (arith-1d)",
                        [prompt_for(it, "bare") for it in arith], [it.answer for it in arith], layouts,
                        args.rounds, strategy="maj@8", answer="number", max_tokens=48, seed=1)

    if 3 in only:
        few = [prompt_for(replace(it, fewshot=it.fewshot[:3]), "few-shot") for it in items[:32]]
        runs = side_by_side("3. prefix cache, GSM8K 3-shot, 32 questions one after another", {
            "no cache": lambda: run_set(engine, few, golds[:32], replace(BASE, prefix_cache=False), sequential=True,
                                        strategy="single", **ask),
            "cache": lambda: run_set(engine, few, golds[:32], BASE, sequential=True, strategy="single", **ask),
        }, args.rounds)
        a, b = runs["no cache"], runs["cache"]
        print(f"   time to first token p50: {med(a, 'ttft_p50') * 1000:.0f} ms without, "
              f"{med(b, 'ttft_p50') * 1000:.0f} ms with the cache: {med(a, 'ttft_p50') / med(b, 'ttft_p50'):.2f}x "
              f"lower (target >= 3x); whole run {med(a, 'wall'):.1f} s vs {med(b, 'wall'):.1f} s; prompt tokens "
              f"read {med(a, 'prompt_read'):.0f} vs {med(b, 'prompt_read'):.0f} ({med(b, 'prompt_cached'):.0f} "
              "served from the cache)")

    if 4 in only:
        eight, eight_golds = zero[:8], golds[:8]
        budget = Budget(deadline_s=2.0)
        runs = side_by_side("4. deadline under load: 8 queries arriving together, 2 s each", {
            "one by one": lambda: run_set(engine, eight, eight_golds, BASE, strategy="auto", budget=budget, **ask),
            "together": lambda: run_set(engine, eight, eight_golds, replace(BASE, max_running=8), strategy="auto",
                                        budget=budget, **ask),
        }, args.rounds)
        for k, v in runs.items():
            walls = [w for r in v for w in r["wall_per_query"]]
            met = sum(w <= 2.2 for w in walls) / len(walls)
            print(f"   {k}: within 2.2 s {met:.0%} (target >= 95% together), accuracy {med(v, 'accuracy'):.0%}, "
                  f"tokens/query {med(v, 'tokens'):.0f}, wall p95 {sorted(walls)[int(0.95 * (len(walls) - 1))]:.2f} s")

    if 5 in only:
        mixed = zero[:16]
        deadlines = [1.5 if i % 3 == 0 else 20.0 for i in range(16)]
        res = {}
        for policy in ("fifo", "edf"):
            rt = Runtime(engine, "smollm2-135m", scheduler=replace(BASE, max_running=4, policy=policy))
            try:
                reqs = [rt.request(p, strategy="single", budget=Budget(deadline_s=d), **ask)
                        for p, d in zip(mixed, deadlines)]
                results = [f.result() for f in rt.scheduler.submit_many(reqs)]
            finally:
                rt.scheduler.close()
            tight = [r for r, d in zip(results, deadlines) if d < 2]
            res[policy] = (sum(r.stats.wall_s <= d * 1.1 for r, d in zip(results, deadlines)) / 16,
                           sum(bool(r.samples) and r.stop_reason != "deadline" for r in tight) / len(tight))
        print("-- 5. queue policy: 16 queries together (a third with 1.5 s, the rest 20 s), 4 running at once")
        for policy, (met, tight_done) in res.items():
            print(f"   {policy}: deadlines met {met:.0%}; tight queries that finished on their own {tight_done:.0%}")

    if 6 in only:
        few = prompt_for(replace(items[0], fewshot=items[0].fewshot[:3]), "few-shot")
        print("-- 6. prompt chunks: 4 queries decoding while a 3-shot prompt is read")
        for chunk in (32, 64, 128, 512):
            rt = Runtime(engine, "smollm2-135m", scheduler=replace(BASE, max_running=5, prefill_chunk=chunk,
                                                                  prefix_cache=False))
            try:
                started = threading.Event()
                running = [rt.submit(p, strategy="single", max_tokens=96, seed=1,
                                     on_step=lambda gen, ev, started=started: started.set()) for p in zero[:4]]
                started.wait()  # the others are decoding
                time.sleep(0.1)
                mark = len(rt.scheduler.stats.recent)
                first = rt.ask(few, strategy="single", max_tokens=8)
                for f in running:
                    f.result()
                steps = list(rt.scheduler.stats.recent)
            finally:
                rt.scheduler.close()
            reading = [t for t, read, decoded in steps[mark:] if read and decoded]
            plain = [t for t, read, decoded in steps if not read and decoded]
            if not reading:
                print(f"   chunk {chunk:>3}: the others had finished before the long prompt was read")
                continue
            print(f"   chunk {chunk:>3}: the {first.stats.prompt_tokens}-token prompt read in {len(reading)} step(s), "
                  f"{sum(reading):.2f} s; the others' steps meanwhile {statistics.median(reading) * 1000:.0f} ms "
                  f"(max {max(reading) * 1000:.0f} ms) against {statistics.median(plain) * 1000:.0f} ms without a "
                  "prompt chunk")


if __name__ == "__main__":
    main()
