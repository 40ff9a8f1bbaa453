"""Engine throughput, three ways side by side in one run.

(a) a minimal raw ctypes loop over llama.cpp's batch API (the reference the
    engine must keep up with: llama.cpp's own C samplers, no Python per token
    beyond the loop itself);
(b) k sequential ``Llama.create_completion`` calls, the way a llama-cpp-python
    user samples k answers today;
(c) edgescale's engine (``BatchGenerator``), k sequences in one batch.

Each configuration runs ``--reps`` times, interleaved (a, b, c, a, b, c, ...)
so that load from other processes hits all three alike; the median is
reported. Generation is forced to exactly ``--tokens`` new tokens per
sequence (EOS ignored) so every variant does the same work.

    python bench/engine_throughput.py [--model smollm2-135m] [--tokens 64] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


PROMPT = "Write a short story about a robot who learns to paint."


def raw_loop(lib, model, vocab, prompt: list[int], k: int, n_new: int, n_threads: int) -> float:
    """Decode tokens/s of a bare batched loop (prefill excluded), llama.cpp samplers."""
    cp = lib.llama_context_default_params()
    cp.n_ctx = len(prompt) + k * n_new + 16
    cp.n_batch = max(len(prompt), k, 32)
    cp.n_ubatch = cp.n_batch
    cp.n_seq_max = k
    cp.n_threads = cp.n_threads_batch = n_threads
    cp.kv_unified = True
    cp.no_perf = True
    ctx = lib.llama_init_from_model(model, cp)
    batch = lib.llama_batch_init(max(len(prompt), k), 0, k)
    samplers = []
    for i in range(k):
        ch = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(ch, lib.llama_sampler_init_top_k(40))
        lib.llama_sampler_chain_add(ch, lib.llama_sampler_init_top_p(0.95, 1))
        lib.llama_sampler_chain_add(ch, lib.llama_sampler_init_temp(0.8))
        lib.llama_sampler_chain_add(ch, lib.llama_sampler_init_dist(1234 + i))
        samplers.append(ch)
    try:
        batch.n_tokens = len(prompt)
        for j, t in enumerate(prompt):
            batch.token[j] = t
            batch.pos[j] = j
            batch.n_seq_id[j] = k
            for s in range(k):
                batch.seq_id[j][s] = s
            batch.logits[j] = j == len(prompt) - 1
        assert lib.llama_decode(ctx, batch) == 0
        rows = [len(prompt) - 1] * k
        t0 = time.perf_counter()
        for step in range(n_new):
            toks = [lib.llama_sampler_sample(samplers[s], ctx, rows[s]) for s in range(k)]
            if step == n_new - 1:
                break
            batch.n_tokens = k
            for s, tok in enumerate(toks):
                batch.token[s] = tok
                batch.pos[s] = len(prompt) + step
                batch.n_seq_id[s] = 1
                batch.seq_id[s][0] = s
                batch.logits[s] = True
                rows[s] = s
            assert lib.llama_decode(ctx, batch) == 0
        dt = time.perf_counter() - t0
    finally:
        for ch in samplers:
            lib.llama_sampler_free(ch)
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
    return k * n_new / dt


def engine_loop(engine, prompt: list[int], k: int, n_new: int) -> tuple[float, float]:
    """(decode tokens/s, end-to-end seconds for the whole query: context, prefill, decode)."""
    from edgescale.runtime.generate import BatchGenerator, GenerationConfig

    eog = engine.is_eog
    engine.is_eog = lambda tok: False  # force exactly n_new tokens, like the other two
    try:
        start = time.perf_counter()
        with BatchGenerator(engine, prompt, GenerationConfig(max_new_tokens=n_new, seed=1234), n_seqs=k) as g:
            t0 = time.perf_counter()
            while g.live:
                g.step()
            dt = time.perf_counter() - t0
            assert g.generated_tokens == k * n_new
        wall = time.perf_counter() - start
    finally:
        engine.is_eog = eog
    return k * n_new / dt, wall


def sequential_completions(llm, prompt: list[int], k: int, n_new: int) -> tuple[float, float]:
    """k create_completion calls, the llama-cpp-python way: (tokens/s, seconds), each prefill included."""
    t0 = time.perf_counter()
    n = 0
    for i in range(k):
        out = llm.create_completion(
            prompt, max_tokens=n_new, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1234 + i,
            logit_bias={llm.token_eos(): -1e9},
        )
        n += out["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    return n / wall, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ks", default="1,8")
    args = ap.parse_args()

    from llama_cpp import Llama

    from edgescale.devices.cpu import default_threads
    from edgescale.models.catalog import resolve_model
    from edgescale.runtime import _llama_ffi as ffi
    from edgescale.runtime.llama_engine import LlamaCppEngine

    path = resolve_model(args.model)
    threads = args.threads or default_threads()
    engine = LlamaCppEngine.load(path, n_threads=threads)
    lib = ffi.backend().lib
    prompt = engine.format_prompt(PROMPT)
    llm = Llama(str(path), n_ctx=len(prompt) + args.tokens + 16, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    ks = [int(x) for x in args.ks.split(",")]
    print(f"model {Path(path).name}  threads {threads}  prompt {len(prompt)} tokens  {args.tokens} new tokens/seq  "
          f"reps {args.reps} (median)")
    results: dict[tuple[str, int], list[float]] = {}

    def record(name: str, k: int, value: float) -> None:
        results.setdefault((name, k), []).append(value)

    for _ in range(args.reps):
        for k in ks:
            record("raw", k, raw_loop(lib, engine.model.ptr, engine.model.vocab, prompt, k, args.tokens, threads))
            tok_s, wall = engine_loop(engine, prompt, k, args.tokens)
            record("engine", k, tok_s)
            record("engine_wall", k, wall)
            tok_s, wall = sequential_completions(llm, prompt, k, args.tokens)
            record("sequential", k, tok_s)
            record("sequential_wall", k, wall)
    med = {key: statistics.median(v) for key, v in results.items()}
    print("decode throughput (prefill excluded for raw loop and engine):")
    print(f"{'k':>3} {'raw loop tok/s':>15} {'engine tok/s':>13} {'engine/raw':>11}")
    for k in ks:
        raw, eng = med[("raw", k)], med[("engine", k)]
        print(f"{k:>3} {raw:>15.1f} {eng:>13.1f} {eng / raw:>11.2f}")
    print("whole query, k samples of one prompt (context, prefill, decode):")
    print(f"{'k':>3} {'engine s':>9} {'k x Llama s':>12} {'speed-up':>9} {'k x Llama tok/s':>16}")
    for k in ks:
        ew, sw = med[("engine_wall", k)], med[("sequential_wall", k)]
        print(f"{k:>3} {ew:>9.2f} {sw:>12.2f} {sw / ew:>8.2f}x {med[('sequential', k)]:>16.1f}")
    spread = {key: (min(v), max(v)) for key, v in results.items() if not key[0].endswith("wall")}
    print("tok/s min-max per cell:", {f"{a}@{k}": f"{lo:.0f}-{hi:.0f}" for (a, k), (lo, hi) in spread.items()})
    engine.close()


if __name__ == "__main__":
    main()
