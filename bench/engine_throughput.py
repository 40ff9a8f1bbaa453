"""Engine throughput, three ways side by side in one run.

(a) a minimal raw ctypes loop over llama.cpp's batch API (the reference the
    engine must keep up with: llama.cpp's own C samplers, no Python per token
    beyond the loop itself);
(b) k sequential ``Llama.create_completion`` calls, the way a llama-cpp-python
    user samples k answers today;
(c) edgescale's engine (``BatchGenerator``), k sequences in one batch.

Each configuration runs ``--reps`` times, interleaved (a, b, c, a, b, c, ...)
so that load from other processes hits all three alike; the median is
reported. Because a shared machine makes decode times themselves noisy, the
bench also times every step's ``llama_decode`` and reports the time each loop
spends *outside* it per step (sampling, bookkeeping, Python). The decode work
is identical in both loops, so ``(D + raw_outside) / (D + engine_outside)``,
with D the median decode time per step, is the engine's throughput relative to
the raw loop without the noise of the decode itself. Generation is forced to exactly ``--tokens`` new tokens per
sequence (EOS ignored) so every variant does the same work.

    python bench/engine_throughput.py [--model smollm2-135m] [--tokens 64] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPT = "Write a short story about a robot who learns to paint."


def raw_loop(lib, model, vocab, prompt: list[int], k: int, n_new: int, n_threads: int) -> tuple[float, float]:
    """(decode tokens/s, seconds inside llama_decode) of a bare batched loop (prefill excluded),
    llama.cpp's own samplers."""
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
        in_decode = 0.0
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
            td = time.perf_counter()
            assert lib.llama_decode(ctx, batch) == 0
            in_decode += time.perf_counter() - td
        dt = time.perf_counter() - t0
    finally:
        for ch in samplers:
            lib.llama_sampler_free(ch)
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
    return k * n_new / dt, in_decode


def engine_loop(engine, prompt: list[int], k: int, n_new: int) -> tuple[float, float, float]:
    """(decode tokens/s, seconds inside llama_decode during the steps, end-to-end seconds of the
    whole query: context, prefill, decode)."""
    from edgescale.runtime.generate import BatchGenerator, GenerationConfig

    # exactly n_new tokens, like the other two
    cfg = GenerationConfig(max_new_tokens=n_new, seed=1234, ignore_eos=True)
    start = time.perf_counter()
    with BatchGenerator(engine, prompt, cfg, n_seqs=k) as g:
        before = g.session.decode_seconds  # the prefill's decodes are not steps
        t0 = time.perf_counter()
        while g.live:
            g.step()
        dt = time.perf_counter() - t0
        in_decode = g.session.decode_seconds - before
        assert g.generated_tokens == k * n_new
    wall = time.perf_counter() - start
    return k * n_new / dt, in_decode, wall


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
    ap.add_argument("--no-sequential", action="store_true", help="skip the k x Llama.create_completion runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of medians (bench/builds.py)")
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
    if not args.json:
        print(f"model {Path(path).name}  threads {threads}  prompt {len(prompt)} tokens  "
              f"{args.tokens} new tokens/seq  reps {args.reps} (median)")
    results: dict[tuple[str, int], list[float]] = {}

    def record(name: str, k: int, value: float) -> None:
        results.setdefault((name, k), []).append(value)

    n = args.tokens
    for _ in range(args.reps):
        for k in ks:
            tok_s, dec = raw_loop(lib, engine.model.ptr, engine.model.vocab, prompt, k, n, threads)
            record("raw", k, tok_s)
            record("raw_outside", k, (k * n / tok_s - dec) / n)
            record("decode", k, dec / (n - 1))
            tok_s, dec, wall = engine_loop(engine, prompt, k, n)
            record("engine", k, tok_s)
            record("engine_outside", k, (k * n / tok_s - dec) / n)
            record("decode", k, dec / (n - 1))
            record("engine_wall", k, wall)
            if not args.no_sequential:
                tok_s, wall = sequential_completions(llm, prompt, k, args.tokens)
                record("sequential", k, tok_s)
                record("sequential_wall", k, wall)
    med = {key: statistics.median(v) for key, v in results.items()}
    engine.close()
    if args.json:
        out: dict[str, dict[str, float]] = {}
        for (name, k), value in med.items():
            out.setdefault(str(k), {})[name] = value
        print(json.dumps({"threads": threads, "tokens": n, "system_info": ffi.backend().system_info(),
                          "medians": out}))
        return
    print("decode throughput (prefill excluded for raw loop and engine):")
    print(f"{'k':>3} {'raw loop tok/s':>15} {'engine tok/s':>13} {'engine/raw':>11}")
    for k in ks:
        raw, eng = med[("raw", k)], med[("engine", k)]
        print(f"{k:>3} {raw:>15.1f} {eng:>13.1f} {eng / raw:>11.2f}")
    print("time per step outside llama_decode (sampling, bookkeeping), and the throughput ratio it implies:")
    print(f"{'k':>3} {'decode ms':>10} {'raw outside ms':>15} {'engine outside ms':>18} {'implied engine/raw':>19}")
    for k in ks:
        d, ro, eo = med[("decode", k)], med[("raw_outside", k)], med[("engine_outside", k)]
        print(f"{k:>3} {1e3 * d:>10.2f} {1e3 * ro:>15.3f} {1e3 * eo:>18.3f} {(d + ro) / (d + eo):>19.3f}")
    if args.no_sequential:
        return
    print("whole query, k samples of one prompt (context, prefill, decode):")
    print(f"{'k':>3} {'engine s':>9} {'k x Llama s':>12} {'speed-up':>9} {'k x Llama tok/s':>16}")
    for k in ks:
        ew, sw = med[("engine_wall", k)], med[("sequential_wall", k)]
        print(f"{k:>3} {ew:>9.2f} {sw:>12.2f} {sw / ew:>8.2f}x {med[('sequential', k)]:>16.1f}")
    spread = {key: (min(v), max(v)) for key, v in results.items() if key[0] in ("raw", "engine", "sequential")}
    print("tok/s min-max per cell:", {f"{a}@{k}": f"{lo:.0f}-{hi:.0f}" for (a, k), (lo, hi) in spread.items()})


if __name__ == "__main__":
    main()
