"""Soak: 1,000 queries through one `edgescale batch` process; does anything grow?

The batch process answers generated arithmetic questions with a rotating mix of
strategies (single, maj@4, ffs@4, short-2@4, adaptive, early-exit, auto with a
deadline). Every ``--every`` results the parent samples the child's RSS, open
files and threads (psutil). The drift is the last sample against the first
sample after warm-up (the first ``--every`` results load the model, build
contexts of every shape and fill caches).

    python bench/soak.py [--queries 1000] [--every 50] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

import psutil

STRATEGIES = ("single", "maj@4", "ffs@4", "short-2@4", "adaptive:max=6,wave=3", "early-exit:every=8,window=2",
              "auto")


def queries(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        q: dict[str, object] = {"id": i, "prompt": f"What is {a} plus {b}? Answer with a number.",
                                "strategy": STRATEGIES[i % len(STRATEGIES)], "seed": i, "answer": "number"}
        if q["strategy"] == "auto":
            q["deadline"] = "3s"
        out.append(q)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "edgescale.cli", "batch", "-n", str(args.max_tokens), "--threads",
           str(args.threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGESCALE_THREADS": str(args.threads)})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()  # type: ignore[union-attr,arg-type]

    def feed() -> None:
        for q in queries(args.queries, args.seed):
            proc.stdin.write(json.dumps(q) + "\n")  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]

    threading.Thread(target=feed, daemon=True).start()
    child = psutil.Process(proc.pid)
    samples: list[tuple[int, float, int, int, int]] = []  # (done, seconds, rss, open files, threads)
    done = ok = 0
    t0 = time.monotonic()
    for line in proc.stdout:
        done += 1
        ok += bool(json.loads(line).get("ok"))
        if done % args.every == 0:
            samples.append((done, time.monotonic() - t0, child.memory_info().rss, len(child.open_files()),
                            child.num_threads()))
            d, t, rss, files, threads = samples[-1]
            print(f"{d:>5} queries {t:7.1f} s  RSS {rss / 2**20:7.1f} MiB  open files {files}  threads {threads}",
                  flush=True)
    proc.wait()
    base = samples[1] if len(samples) > 1 else samples[0]
    last = samples[-1]
    drift = (last[2] - base[2]) / base[2]
    print(f"{done} queries ({ok} ok) in {last[1]:.0f} s; RSS {base[2] / 2**20:.1f} MiB after {base[0]} -> "
          f"{last[2] / 2**20:.1f} MiB after {last[0]}: drift {drift:+.2%} (target < 5%); open files "
          f"{base[3]} -> {last[3]}, threads {base[4]} -> {last[4]}; batch exit code {proc.returncode}")
    if errors:
        print("stderr of the batch process:", "".join(errors[-5:]).strip())


if __name__ == "__main__":
    main()
