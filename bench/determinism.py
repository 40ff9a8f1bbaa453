"""What the determinism contract holds on this CPU and build, measured.

For each model: k samples (T=0.8) of several prompts and seeds are generated in
one batch; then the same tokens are replayed teacher-forced, batched and one
sequence alone, and the logits compared row by row:

* ``room``: the context holds every sample (how a query runs): a batch computes
  bitwise what single runs compute where the kernels do not depend on the batch width;
* ``reclaim``: a context just big enough for the live samples, so the cells of ended
  samples are handed back to llama.cpp mid-batch (what a shared context under memory
  pressure does): attention then sums in another order;
* ``free-running``: each sample generated alone with its seed vs in the batch;
* ``repeat``: the same batch generated twice (must be bitwise identical everywhere).

    python bench/determinism.py [--models smollm2-135m,gemma3-270m] [--k 8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import time

from edgescale.models.catalog import resolve_model
from edgescale.runtime.generate import BatchGenerator, GenerationConfig
from edgescale.runtime.llama_engine import LlamaCppEngine
from edgescale.runtime.replay import RowDiff, compare_rows, replay
from edgescale.runtime.sampling import SamplingConfig

PROMPTS = (
    "Name three colours of the rainbow and explain why the sky is blue.",
    "What is 15 + 27? Think step by step.",
    "Write a short poem about the sea.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Explain photosynthesis to a child.",
    "List four animals that live in the ocean.",
)


def generate(engine, tokens, k, seed, n):  # type: ignore[no-untyped-def]
    cfg = GenerationConfig(max_new_tokens=n, sampling=SamplingConfig(temperature=0.8), seed=seed)
    with BatchGenerator(engine, tokens, cfg, n_seqs=k) as g:
        while g.live:
            g.step()
        return [list(s.tokens) for s in g.states], [list(s.logprobs) for s in g.states]


def add(total: dict[str, float], d: RowDiff) -> None:
    total["steps"] += d.steps
    total["identical"] += d.identical
    total["top1"] += d.top1_agree
    total["max_abs"] = max(total["max_abs"], d.max_abs)


def measure(model: str, k: int, n: int, seeds: tuple[int, ...]) -> None:
    engine = LlamaCppEngine.load(resolve_model(model), n_threads=2)
    t0 = time.perf_counter()
    room = dict.fromkeys(("steps", "identical", "top1", "max_abs"), 0.0)
    tight = dict(room)
    diverged = seqs_total = repeats_differ = reclaims = 0
    for prompt in PROMPTS:
        tokens = engine.format_prompt(prompt)
        for seed in seeds:
            seqs, lps = generate(engine, tokens, k, seed, n)
            again = generate(engine, tokens, k, seed, n)
            repeats_differ += int((seqs, lps) != again)
            batch_rows, s = replay(engine, tokens, seqs, max_new=n)
            s.close()
            tight_rows, s = replay(engine, tokens, seqs, max_new=n, tight=True)
            reclaims += getattr(s, "reclaims", 0)
            s.close()
            for i in range(k):
                alone, s = replay(engine, tokens, [seqs[i]], max_new=n)
                s.close()
                add(room, compare_rows(batch_rows[i], alone[0]))
                add(tight, compare_rows(tight_rows[i], alone[0]))
                single, _ = generate(engine, tokens, 1, seed + i, n)
                seqs_total += 1
                diverged += int(single[0] != seqs[i])
    engine.close()
    print(f"{model}: {len(PROMPTS)} prompts x {len(seeds)} seeds x k={k}, {n} tokens, T=0.8 "
          f"({time.perf_counter() - t0:.0f} s)")
    for name, tot in (("room", room), ("reclaim", tight)):
        print(f"  {name:<8} rows {tot['steps']:.0f}: bitwise identical {tot['identical'] / tot['steps']:.1%}, "
              f"top-1 agree {tot['top1'] / tot['steps']:.2%}, max |dlogit| {tot['max_abs']:.3f}")
    print(f"  reclaims in the tight replays: {reclaims}")
    print(f"  free-running: {diverged} of {seqs_total} samples differ from their single run")
    print(f"  repeat: {repeats_differ} of {len(PROMPTS) * len(seeds)} batches differ when run twice")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--seeds", default="0,100")
    args = ap.parse_args()
    from edgescale.runtime import _llama_ffi as ffi

    print(ffi.backend().system_info().strip())
    for model in args.models.split(","):
        measure(model, args.k, args.tokens, tuple(int(s) for s in args.seeds.split(",")))


if __name__ == "__main__":
    main()
