"""What structured output costs: the token mask per step, and decode speed with and without a
JSON schema, on the packaged models.

    python bench/structured.py [--models smollm2-135m,gemma3-270m] [--threads 2] [--steps 128]

* constraint cost per token (us): in the loop, a drawn token is checked (microseconds) and a
  full mask computed only when the constraint rejects it (llama.cpp's order); the share of
  tokens that needed one is printed. Mask cost alone: llguidance's mask (computed and applied to the logits row, as the
  step loop does it) against llama.cpp's own grammar sampler (GBNF made from the same schema by
  llama-cpp-python's converter, applied to the full-vocabulary candidate array), both over the
  tokens of the same valid JSON text;
* decode tok/s at k=1 and k=8: free text run to ``--steps`` tokens (``ignore_eos``) against
  samples under a JSON schema that cannot close within ``--steps`` tokens (an array of at
  least 64 objects), so both decode exactly ``k x steps`` tokens. The two are run alternately,
  ``--reps`` times each, in one process; the best of each is compared (a ratio, on a noisy
  machine).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from typing import Any

import numpy as np

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
LONG = {"type": "array", "items": PERSON, "minItems": 64}
PROMPT = "List many people as JSON: an array of objects with a name and an age."


def decode_run(engine: Any, k: int, steps: int, constraint: Any) -> tuple[float, int, float, int]:
    """(tokens per second of the step loop, tokens, seconds in masks, masks)."""
    from edgescale.runtime.generate import BatchGenerator, GenerationConfig
    from edgescale.runtime.sampling import SamplingConfig

    cfg = GenerationConfig(max_new_tokens=steps, sampling=SamplingConfig(temperature=0.8), constraint=constraint,
                           ignore_eos=constraint is None)
    with BatchGenerator(engine, engine.format_prompt(PROMPT), cfg, n_seqs=k) as gen:
        t0 = time.perf_counter()
        while gen.live:
            gen.step()
        wall = time.perf_counter() - t0
        masks = gen.constraints.masks if gen.constraints is not None else 0
        return gen.generated_tokens / wall, gen.generated_tokens, gen.mask_seconds, masks


def llguidance_mask_us(engine: Any, constraint: Any, tokens: list[int]) -> float:
    matcher = engine.constraint_vocab().matcher(constraint)
    row = np.random.default_rng(0).standard_normal(engine.info.n_vocab).astype(np.float32)
    for tok in tokens:
        matcher.mask(row)
        assert matcher.consume(tok), "the text does not match its schema"
    return 1e6 * matcher.mask_seconds / max(1, matcher.masks)


def llama_grammar_mask_us(engine: Any, schema: dict[str, Any], tokens: list[int]) -> float:
    """llama.cpp's grammar sampler over the full vocabulary, per token."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(schema))
    vocab = engine.model.vocab
    smpl = lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    n = engine.info.n_vocab
    data = (lib.llama_token_data * n)()
    logits = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    spent = 0.0
    try:
        for tok in tokens:
            for i in range(n):  # a fresh candidate array every step, as a sampler chain gets it
                data[i].id, data[i].logit, data[i].p = i, float(logits[i]), 0.0
            arr = lib.llama_token_data_array(data=ctypes.cast(data, lib.llama_token_data_p), size=n, selected=-1,
                                             sorted=False)
            t0 = time.perf_counter()
            lib.llama_sampler_apply(smpl, ctypes.byref(arr))
            spent += time.perf_counter() - t0
            lib.llama_sampler_accept(smpl, tok)
    finally:
        lib.llama_sampler_free(smpl)
    return 1e6 * spent / len(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    from edgescale.devices.hardware import describe
    from edgescale.models.catalog import resolve_model
    from edgescale.runtime.constraints import parse_constraint
    from edgescale.runtime.llama_engine import LlamaCppEngine

    print(f"# CPU: {describe(measure_load=False).cpu.model}; {args.threads} threads; {args.steps} tokens a sample")
    long = parse_constraint("json_schema", LONG)
    text = json.dumps([{"name": "Ada", "age": 36}, {"name": "Bob", "age": 7}] * 4)[:-1]  # open: minItems 64
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        with LlamaCppEngine.load(resolve_model(model), n_threads=args.threads) as engine:
            t0 = time.perf_counter()
            engine.constraint_vocab()
            vocab_s = time.perf_counter() - t0
            tokens = engine.tokenize(text, add_special=False, parse_special=False)
            llg = llguidance_mask_us(engine, long, tokens)
            gram = llama_grammar_mask_us(engine, LONG, tokens)
            print(f"\n## {model} (vocabulary {engine.info.n_vocab}; llguidance reads it in {vocab_s:.1f} s, once)")
            print(f"mask per token, {len(tokens)} tokens of JSON: llguidance {llg:.0f} us, "
                  f"llama.cpp grammar sampler {gram:.0f} us ({gram / llg:.0f}x)")
            print("| k | free tok/s | JSON schema tok/s | ratio | constraint us/token in the loop | tokens masked |")
            print("|---|---|---|---|---|---|")
            for k in (1, 8):
                free, json_ = [], []
                spent = share = 0.0
                for _ in range(args.reps):
                    free.append(decode_run(engine, k, args.steps, None)[0])
                    tps, n, mask_s, masks = decode_run(engine, k, args.steps, long)
                    json_.append(tps)
                    spent, share = 1e6 * mask_s / n, masks / n
                f, j = max(free), max(json_)
                print(f"| {k} | {f:.0f} | {j:.0f} | {j / f:.3f} | {spent:.0f} | {100 * share:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
