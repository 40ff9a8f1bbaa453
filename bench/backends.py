"""llama.cpp vs ONNX Runtime on the same weights, side by side in one run.

For each backend: load time, decode tokens/s through edgescale's batched step
loop (``BatchGenerator``) at k=1 (single stream) and k=8, and peak RSS. Each
measurement runs in its own subprocess (so RSS is that backend's alone), the
backends alternate (llama.cpp, ONNX, llama.cpp, ONNX, ...) so that load from
other processes hits both alike, and the median of ``--reps`` runs is printed
with the ONNX/llama.cpp ratios. Generation is forced to exactly ``--tokens``
new tokens per sequence (end-of-generation ignored) so both do the same work.

The ONNX model is converted from the same GGUF (Q4_0/Q4_1/Q8_0 weights carry
over bit for bit). ``--requant Q4_0`` first re-quantises the GGUF with
llama.cpp's quantiser, then both backends run that file's weights.

    python bench/backends.py [--model smollm2-135m] [--tokens 64] [--reps 3] [--threads N] [--requant Q4_0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Write a short story about a robot who learns to paint."


def worker(
    backend: str, path: str, ks: list[int], n_new: int, threads: int, batch_invariant: bool
) -> dict[str, object]:
    """Runs in a subprocess: load one backend, decode, report."""
    from edgescale.runtime.generate import BatchGenerator, GenerationConfig
    from edgescale.runtime.memory import peak_rss_bytes  # VmHWM: this process's own peak

    t0 = time.perf_counter()
    engine: object
    if backend == "onnxruntime":
        from edgescale.runtime.onnx_engine import OnnxEngine

        engine = OnnxEngine.load(path, n_threads=threads, batch_invariant=batch_invariant)
    else:
        from edgescale.runtime.llama_engine import LlamaCppEngine

        engine = LlamaCppEngine.load(path, n_threads=threads)
    load_s = time.perf_counter() - t0
    prompt = engine.format_prompt(PROMPT)  # type: ignore[attr-defined]
    tok_s: dict[str, float] = {}
    prefill_s: dict[str, float] = {}
    for k in ks:
        cfg = GenerationConfig(max_new_tokens=n_new, seed=1234, ignore_eos=True)  # exactly n_new each
        t1 = time.perf_counter()
        with BatchGenerator(engine, prompt, cfg, n_seqs=k) as gen:  # type: ignore[arg-type]
            prefill_s[str(k)] = time.perf_counter() - t1
            t2 = time.perf_counter()
            while gen.live:
                gen.step()
            dt = time.perf_counter() - t2
            assert gen.generated_tokens == k * n_new
        tok_s[str(k)] = k * n_new / dt
    engine.close()  # type: ignore[attr-defined]
    return {
        "load_s": load_s,
        "tok_s": tok_s,
        "prefill_s": prefill_s,
        "peak_rss": peak_rss_bytes(),
        "prompt_tokens": len(prompt),
    }


def _spawn(backend: str, path: Path, args: argparse.Namespace) -> dict[str, object]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--path",
        str(path),
        "--ks",
        args.ks,
        "--tokens",
        str(args.tokens),
        "--threads",
        str(args.threads),
    ]
    if args.batch_invariant:
        cmd.append("--batch-invariant")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or .gguf path")
    ap.add_argument(
        "--onnx-dir", default=None, help="an already converted model dir (default: convert now)"
    )
    ap.add_argument("--requant", default=None, help="re-quantise the GGUF first (e.g. Q4_0)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ks", default="1,8")
    ap.add_argument(
        "--batch-invariant", action="store_true", help="ONNX: pad lone rows (see OnnxEngine.load)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    if args.worker:
        print(
            json.dumps(
                worker(args.worker, args.path, ks, args.tokens, args.threads, args.batch_invariant)
            )
        )
        return

    from edgescale.devices.cpu import default_threads
    from edgescale.models.catalog import resolve_model

    args.threads = args.threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="edgescale-bench-") as tmp:
        gguf = resolve_model(args.model)
        if args.requant:
            from edgescale.quant.quantize import quantize

            q = quantize(
                gguf, Path(tmp) / f"model-{args.requant}.gguf", args.requant, n_threads=args.threads
            )
            print(q.summary())
            gguf = q.dst
        onnx_dir = Path(args.onnx_dir) if args.onnx_dir else None
        if onnx_dir is None:
            from edgescale.quant.gguf_to_onnx import convert

            report = convert(gguf, Path(tmp) / "onnx")
            print(report.summary())
            onnx_dir = report.out_dir
        runs: dict[str, list[dict[str, object]]] = {"llama.cpp": [], "onnxruntime": []}
        for _ in range(args.reps):
            runs["llama.cpp"].append(_spawn("llama.cpp", gguf, args))
            runs["onnxruntime"].append(_spawn("onnxruntime", onnx_dir, args))
    med = {b: _medians(r, ks) for b, r in runs.items()}
    prompt_tokens = runs["llama.cpp"][0]["prompt_tokens"]
    print(
        f"model {gguf.name}  threads {args.threads}  prompt {prompt_tokens} tokens  {args.tokens} new tokens/seq  "
        f"reps {args.reps} (median; each run in its own process, backends alternating)"
    )
    head = f"{'':22}{'llama.cpp':>12}{'onnxruntime':>13}{'onnx/llama':>12}"
    print(head)
    rows = (
        [("load s", "load_s")]
        + [(f"decode tok/s k={k}", f"tok_s.{k}") for k in ks]
        + [(f"prefill+setup s k={k}", f"prefill_s.{k}") for k in ks]
        + [("peak RSS MB", "peak_rss")]
    )
    for label, key in rows:
        a, b = med["llama.cpp"][key], med["onnxruntime"][key]
        scale = 1e-6 if key == "peak_rss" else 1.0
        print(
            f"{label:22}{a * scale:>12.2f}{b * scale:>13.2f}{(b / a if a else float('nan')):>12.2f}"
        )
    spread = {
        f"{b}:{key}": f"{min(v):.1f}-{max(v):.1f}"
        for b, r in runs.items()
        for key, v in _values(r, ks).items()
        if key.startswith("tok_s")
    }
    print("min-max tok/s per cell:", spread)


def _values(runs: list[dict[str, object]], ks: list[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"load_s": [], "peak_rss": []}
    for r in runs:
        out["load_s"].append(float(r["load_s"]))  # type: ignore[arg-type]
        out["peak_rss"].append(float(r["peak_rss"]))  # type: ignore[arg-type]
        for k in ks:
            out.setdefault(f"tok_s.{k}", []).append(float(r["tok_s"][str(k)]))  # type: ignore[index]
            out.setdefault(f"prefill_s.{k}", []).append(float(r["prefill_s"][str(k)]))  # type: ignore[index]
    return out


def _medians(runs: list[dict[str, object]], ks: list[int]) -> dict[str, float]:
    return {key: statistics.median(v) for key, v in _values(runs, ks).items()}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
