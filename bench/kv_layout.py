"""llama.cpp's unified KV cache against one KV stream per sequence, at growing batch width.

Every sequence reads a prompt of its own (about 100 tokens, no sharing), then all decode
one token a step together; the median step time of 24 steps gives tokens/s. In a unified
cache every token attends over every cell in use (other sequences' cells are masked, not
skipped), so attention grows with the width times the cells of all sequences; with one
stream per sequence (``kv_unified=false``) each token attends only to its own stream.
The shared decode loop uses streams when several queries decode at once (``--kv-layout auto``),
the unified cache for one query at a time (its samples share one copy of the prompt).

    python bench/kv_layout.py [--widths 8,16,64] [--threads 2] [--prompt 100] [--steps 24] [--model NAME|PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgescale.loader import runnable_model
from edgescale.runtime import _llama_ffi as ffi
from edgescale.runtime.llama_engine import LlamaCppEngine

CELLS_PER_SEQ = 256  # one stream's size (llama.cpp pads to 256); the prompt and the steps fit


def step_time(engine: LlamaCppEngine, *, width: int, unified: bool, prompt: list[int], steps: int) -> float:
    params = ffi.ContextParams(n_ctx=width * CELLS_PER_SEQ, n_batch=max(width, len(prompt)), n_seq_max=width,
                               n_threads=engine.n_threads, kv_unified=unified)
    ctx = ffi.Context(engine.model, params)
    batch = ffi.Batch(max(width, len(prompt)), 1)
    try:
        nxt = []
        for s in range(width):
            toks = prompt[: len(prompt) - s % 7]  # slightly different lengths, as real prompts
            batch.clear()
            for i, t in enumerate(toks):
                batch.add(t, i, (s,), i == len(toks) - 1)
            ctx.decode(batch)
            nxt.append((int(np.argmax(ctx.logits(1)[0])), len(toks)))
        times = []
        for _ in range(steps):
            batch.clear()
            for s, (tok, pos) in enumerate(nxt):
                batch.add(tok, pos, (s,), True)
            t0 = time.perf_counter()
            ctx.decode(batch)
            times.append(time.perf_counter() - t0)
            rows = ctx.logits(width)
            nxt = [(int(np.argmax(rows[s])), pos + 1) for s, (_, pos) in enumerate(nxt)]
        return statistics.median(times)
    finally:
        batch.close()
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="8,16,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--model", default="smollm2-135m", help="GGUF path, catalog name, or NAME:TYPE (a copy)")
    args = ap.parse_args()
    engine = LlamaCppEngine.load(runnable_model(args.model), n_threads=args.threads)
    text = "Write a long story about a lighthouse keeper, the sea, storms, ships and a cat. " * 8
    prompt = engine.format_prompt(text)[: args.prompt]
    print(f"{engine.info.path.name}, {args.threads} threads, {len(prompt)}-token prompts, one per sequence, "
          f"median of {args.steps} steps")
    for width in (int(w) for w in args.widths.split(",")):
        unified = step_time(engine, width=width, unified=True, prompt=prompt, steps=args.steps)
        streams = step_time(engine, width=width, unified=False, prompt=prompt, steps=args.steps)
        print(f"  width {width:>3}: unified {width / unified:6.0f} tok/s ({unified * 1000:.0f} ms/step), "
              f"per-sequence streams {width / streams:6.0f} tok/s ({streams * 1000:.0f} ms/step): "
              f"{unified / streams:.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
