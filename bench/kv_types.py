"""What each KV cache type costs, side by side in one run: quality against f16, decode speed,
memory, and (optionally) accuracy.

    python bench/kv_types.py [--models smollm2-135m,gemma3-270m] [--types f16,q8_0,q4_0]
                             [--accuracy 100 --datasets arith-1d,arc-easy]

Per model and type:

* teacher-forced top-1 agreement with an f16 cache, max |logit difference| and the
  perplexity ratio over the fixed evaluation text (``evals.quality.kv_type_cost``);
* decode tok/s of one query at k=1 and k=8 (greedy tokens fed back, 128 steps after a
  100-token prompt), and of 8 concurrent single queries through the shared loop
  (``ignore_eos``: every sample runs its 128 tokens), each type measured right after
  f16 in the same process, as a ratio to it;
* peak RSS of ``edgescale run -s maj@8 -n 512 --ignore-eos`` (a fixed plan: no budget) in
  a subprocess per type;
* with ``--accuracy N``: ``edgescale bench`` on N questions of each dataset, single and
  maj@8, accuracy with its 95% interval (a subprocess per type).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

PROMPT = "Write a long and detailed story about a lighthouse keeper who finds a message in a bottle. " * 5
STEPS = 128


def decode_tok_s(engine: Any, kv: Any, k: int) -> float:
    """Tokens per second of ``k`` sequences decoding together after a shared prompt."""
    import numpy as np

    prompt = engine.format_prompt(PROMPT)[:100]
    session = engine.session(n_seqs=k, n_cells=len(prompt) + k * (STEPS + 8) + 256, max_batch=max(len(prompt), k),
                             kv_type=kv)
    try:
        row = np.asarray(session.prefill(prompt, list(range(k))))
        tokens = [int(row.argmax())] * k
        t0 = time.perf_counter()
        for _ in range(STEPS):
            rows = np.asarray(session.decode([(i, [tokens[i]]) for i in range(k)]))
            tokens = [int(t) for t in rows.argmax(axis=1)]
        return k * STEPS / (time.perf_counter() - t0)
    finally:
        session.close()


def concurrent_tok_s(engine: Any, kv_type: str) -> float:
    """Sample tokens per second of 8 single queries at once through the shared loop."""
    from edgescale.api import Runtime
    from edgescale.scheduler.config import SchedulerConfig

    rt = Runtime(engine, "bench", scheduler=SchedulerConfig(max_running=8, expect_running=8, kv_layout="streams"))
    try:
        rt.use_kv_type(kv_type)
        reqs = [rt.request(f"Question {i}: {PROMPT}", strategy="single", max_tokens=STEPS, ignore_eos=True)
                for i in range(8)]
        t0 = time.perf_counter()
        results = [f.result() for f in rt.scheduler.submit_many(reqs)]
        seconds = time.perf_counter() - t0
        return sum(r.stats.total_tokens for r in results) / seconds
    finally:
        rt.scheduler.close()


def peak_rss_mb(model: str, kv_type: str, threads: int) -> float:
    proc = subprocess.run([sys.executable, "-m", "edgescale.cli", "run", "--json", "-m", model, "-s", "maj@8", "-n",
                           "512", "--ignore-eos", "--kv-type", kv_type, PROMPT], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "EDGESCALE_THREADS": str(threads)}, check=True)
    return json.loads(proc.stdout)["stats"]["peak_rss_bytes"] / 2**20


def accuracy(model: str, kv_type: str, dataset: str, limit: int, threads: int, max_tokens: int,
             out: str | None = None) -> dict[str, Any]:
    store = ["--out", f"{out}/{model}-{dataset}-{kv_type}"] if out else []  # resumable
    proc = subprocess.run([sys.executable, "-m", "edgescale.cli", "bench", "--json", "-m", model, "--dataset", dataset,
                           "--limit", str(limit), "-S", "single,maj@8", "-n", str(max_tokens), "--kv-type", kv_type,
                           *store],
                          capture_output=True, text=True, timeout=7200,
                          env={**os.environ, "EDGESCALE_THREADS": str(threads)}, check=True)
    rows = json.loads(proc.stdout)["rows"]
    return {r["label"]: (r["accuracy"], r["ci"]["low"], r["ci"]["high"], r["tokens_per_query"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy", type=int, default=0, help="questions per dataset (0: skip accuracy)")
    ap.add_argument("--datasets", default="arith-1d,arc-easy")
    ap.add_argument("--max-tokens", type=int, default=128, help="per sample, for the accuracy runs")
    ap.add_argument("--no-table", action="store_true", help="skip the quality/speed/RSS table (accuracy only)")
    ap.add_argument("--out", default=None, help="folder for the accuracy runs' bench stores (a rerun resumes)")
    args = ap.parse_args()

    from edgescale.devices.hardware import describe

    types = [t.strip() for t in args.types.split(",") if t.strip()]
    cpu = describe(measure_load=False).cpu.model
    print(f"# CPU: {cpu}; {args.threads} threads; {STEPS} decode steps after a 100-token prompt")
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"\n## {model}")
        if not args.no_table:
            table(model, types, args.threads)
        if args.accuracy:
            for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
                print(f"\n{model} on {dataset}, {args.accuracy} questions, -n {args.max_tokens}: accuracy "
                      "[95% CI] (tokens per query)")
                for name in types:
                    acc = accuracy(model, name, dataset, args.accuracy, args.threads, args.max_tokens, args.out)
                    cells = ", ".join(f"{label} {a:.2f} [{lo:.2f}, {hi:.2f}] ({tok:.0f})"
                                      for label, (a, lo, hi, tok) in acc.items())
                    print(f"  {name}: {cells}", flush=True)


def table(model: str, types: list[str], threads: int) -> None:
    """Quality against f16, decode speed as a ratio to f16 measured right before, peak RSS."""
    from edgescale.evals.quality import kv_type_cost
    from edgescale.models.catalog import resolve_model
    from edgescale.runtime.kv_types import F16, parse_kv_type
    from edgescale.runtime.llama_engine import LlamaCppEngine

    print("| KV type | bytes/cell | top-1 vs f16 | max abs logit diff | perplexity x | k=1 tok/s (x f16) "
          "| k=8 tok/s (x f16) | 8 queries tok/s (x f16) | peak RSS maj@8 x 512 |")
    print("|---|---|---|---|---|---|---|---|---|")
    with LlamaCppEngine.load(resolve_model(model), n_threads=threads) as engine:
        for name in types:
            kv = parse_kv_type(name)
            cost = kv_type_cost(engine, name) if kv.lossy else None
            speeds = []
            for fn in (lambda t: decode_tok_s(engine, t, 1), lambda t: decode_tok_s(engine, t, 8),
                       lambda t: concurrent_tok_s(engine, t.name)):
                base = fn(F16)  # f16 right before, in the same process: a ratio on a noisy machine
                speeds.append((fn(kv), base))
            rss = peak_rss_mb(model, name, threads)
            quality = (f"{cost.top1:.3f} | {cost.max_abs_logit_diff:.2f} | {cost.ppl_ratio:.4f}" if cost
                       else "1 | 0 | 1")
            speed = " | ".join(f"{v:.0f} ({v / b:.2f}x)" for v, b in speeds)
            print(f"| {name} | {engine.info.kv_bytes_per_cell(kv.k, kv.v):.0f} | {quality} | {speed} "
                  f"| {rss:.0f} MB |", flush=True)

if __name__ == "__main__":
    main()
