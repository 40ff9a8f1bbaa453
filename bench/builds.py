"""llama.cpp builds side by side: decode tok/s at k=1 and k=8, raw loop and engine, per build.

Each build lives in its own virtual environment (one llama-cpp-python wheel
each, edgescale installed editable in all). The script runs
``bench/engine_throughput.py --reps 1 --json`` in every environment in turn,
``--rounds`` times (A, B, C, A, B, C, ...), so machine noise hits all builds
alike, and prints the medians and each build's ratio to the first.

    # one environment per wheel (wheels from ~/.cache/edgescale/wheels/<build>/):
    python -m venv /tmp/b-native && /tmp/b-native/bin/pip install WHEEL && /tmp/b-native/bin/pip install -e .
    python bench/builds.py native=/tmp/b-native/bin/python portable=/tmp/b-portable/bin/python --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_run(python: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [python, str(HERE / "engine_throughput.py"), "--reps", "1", "--json", "--no-sequential",
           "--tokens", str(args.tokens), "--ks", args.ks, "--threads", str(args.threads), "--model", args.model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: {python} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", help="NAME=PATH/TO/venv/bin/python (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ks", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    if any(len(b) != 2 for b in builds):
        raise SystemExit("error: give builds as NAME=PYTHON")
    ks = args.ks.split(",")
    samples: dict[tuple[str, str, str], list[float]] = {}
    info: dict[str, str] = {}
    for r in range(args.rounds):
        for name, python in builds:
            res = one_run(python, args)
            info[name] = str(res["system_info"])
            for k, row in res["medians"].items():  # type: ignore[union-attr]
                for metric in ("raw", "engine"):
                    samples.setdefault((name, k, metric), []).append(float(row[metric]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med = {key: statistics.median(v) for key, v in samples.items()}
    ref = builds[0][0]
    print(f"decode tok/s, {args.model}, {args.threads} threads, {args.tokens} tokens/sequence, "
          f"median of {args.rounds} interleaved rounds; ratio = build / {ref}")
    header = "".join(f"{f'k={k} raw':>11}{'ratio':>7}{f'k={k} engine':>13}{'ratio':>7}" for k in ks)
    print(f"{'build':<12}{header}")
    for name, _ in builds:
        cells = ""
        for k in ks:
            for metric, width in (("raw", 11), ("engine", 13)):
                v = med[(name, k, metric)]
                cells += f"{v:>{width}.1f}{v / med[(ref, k, metric)]:>7.2f}"
        print(f"{name:<12}{cells}")
    for name, _ in builds:
        print(f"{name}: {info[name].strip()}")


if __name__ == "__main__":
    main()
