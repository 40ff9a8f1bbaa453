"""`edgescale serve` against llama-cpp-python's own OpenAI server, side by side in one run.

Same model file (SmolLM2-135M Q4_1), same threads, both on 127.0.0.1, one server
under load at a time (the other idle), alternating over ``--rounds``. The load is
a fixed mix of chat questions (GSM8K and ARC-Easy, zero-shot), ``max_tokens`` 64:

1. single-sample requests (greedy) from 1, 4 and 8 concurrent clients: completions/s
   and p50/p95 latency (target at 8 clients: >= 1.5x the peer's throughput, p95 no worse);
2. eight answers per question: edgescale ``strategy: maj@8`` (one request) against the
   8 requests a client must send the peer (it has no ``n``), all 8 in flight at once;
   time per question (target >= 1.3x faster), same number of samples;
3. deadlines: 8 concurrent clients with ``deadline_ms: 2000`` (edgescale): the share
   answered within 2.2 s as the client measures it (target >= 95%).

The peer needs llama-cpp-python's server extras:
``pip install fastapi uvicorn sse-starlette starlette-context pydantic-settings``.
Every load is bounded (fixed request counts, per-request timeouts).

    python bench/serve.py [--requests 24] [--questions 6] [--rounds 1] [--threads 2] [--only 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgescale.evals.datasets import load, prompt_for  # noqa: E402
from edgescale.models.catalog import resolve_model  # noqa: E402
from tests.serve_harness import ServerProcess  # noqa: E402

MAX_TOKENS = 64
TIMEOUT_S = 300


class Peer:
    """``python -m llama_cpp.server`` on a free loopback port."""

    def __init__(self, model: Path, threads: int, n_ctx: int = 4096) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--n_ctx", str(n_ctx), "--verbose", "False"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("llama_cpp.server did not start (are its server extras installed?)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chat(url: str, question: str, **extra: Any) -> tuple[float, dict[str, Any]]:
    body = {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, **extra}
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT_S)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()


def load_test(url: str, questions: Sequence[str], clients: int, **extra: Any) -> dict[str, float]:
    """Every question once, from ``clients`` concurrent clients."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [t for t, _ in pool.map(lambda q: chat(url, q, **extra), questions)]
    wall = time.perf_counter() - t0
    lat.sort()
    return {"qps": len(questions) / wall, "p50": statistics.median(lat),
            "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]}


def eight_answers(url: str, questions: Sequence[str], ours: bool) -> dict[str, float]:
    """Eight samples per question, questions one after another."""
    t0 = time.perf_counter()
    samples = 0
    for q in questions:
        if ours:
            _, body = chat(url, q, strategy="maj@8", temperature=0.8)
            samples += body["edgescale"]["samples"]
        else:
            with ThreadPoolExecutor(8) as pool:
                done = list(pool.map(lambda seed, q=q: chat(url, q, temperature=0.8, seed=seed), range(8)))
            samples += len(done)
    return {"s_per_q": (time.perf_counter() - t0) / len(questions), "samples": samples / len(questions)}


def deadline_share(url: str, questions: Sequence[str], deadline_ms: int = 2000) -> dict[str, float]:
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: chat(url, q, deadline_ms=deadline_ms), questions))
    within = sum(t <= deadline_ms / 1000 * 1.1 for t, _ in got)
    hit = sum(body["choices"][0]["finish_reason"] == "deadline" for _, body in got)
    return {"share": within / len(got), "max": max(t for t, _ in got), "deadline_hit": hit / len(got)}


def alternate(rounds: int, runs: dict[str, Callable[[], dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each variant ``rounds`` times, alternating order; the median of each figure."""
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seen[name].append(runs[name]())
    return {name: {k: statistics.median(v[k] for v in vals) for k in vals[0]} for name, vals in seen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24, help="questions per load test")
    ap.add_argument("--questions", type=int, default=6, help="questions for the eight-answer comparison")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="1,2,3")
    args = ap.parse_args()
    only = {int(x) for x in args.only.split(",")}
    import llama_cpp

    model = resolve_model("smollm2-135m")
    half = args.requests // 2
    items = [*load("gsm8k", limit=half), *load("arc-easy", limit=args.requests - half)]
    questions = [prompt_for(it, "zero-shot") for it in items]
    questions = [questions[i // 2 + (i % 2) * half] for i in range(len(questions))]  # interleave the two sets
    print(f"SmolLM2-135M Q4_1 ({model.name}), {args.threads} threads, {len(questions)} chat questions "
          f"(GSM8K + ARC-Easy), max_tokens {MAX_TOKENS}, {args.rounds} round(s); peer: llama-cpp-python "
          f"{llama_cpp.__version__} (python -m llama_cpp.server)", flush=True)
    ours = ServerProcess(["--threads", str(args.threads), "--parallel", "8", "--max-tokens-limit", "4096"],
                         env={"EDGESCALE_THREADS": str(args.threads)})
    peer = Peer(model, args.threads)
    try:
        chat(ours.url, "Hi")  # warm both (first-request allocations)
        chat(peer.url, "Hi")
        if 1 in only:
            print("-- 1. single-sample requests (greedy): completions/s, p50 / p95 latency", flush=True)
            for clients in (1, 4, 8):
                res = alternate(args.rounds, {
                    "edgescale": lambda c=clients: load_test(ours.url, questions, c, temperature=0),
                    "peer": lambda c=clients: load_test(peer.url, questions, c, temperature=0),
                })
                e, p = res["edgescale"], res["peer"]
                print(f"   {clients} client(s): edgescale {e['qps']:.2f}/s p50 {e['p50']:.2f}s p95 {e['p95']:.2f}s | "
                      f"peer {p['qps']:.2f}/s p50 {p['p50']:.2f}s p95 {p['p95']:.2f}s | throughput "
                      f"{e['qps'] / p['qps']:.2f}x, p95 {e['p95'] / p['p95']:.2f}x"
                      + (" (target >= 1.5x, p95 no worse)" if clients == 8 else ""), flush=True)
        if 2 in only:
            qs = questions[: args.questions]
            res = alternate(args.rounds, {"edgescale": lambda: eight_answers(ours.url, qs, True),
                                          "peer": lambda: eight_answers(peer.url, qs, False)})
            e, p = res["edgescale"], res["peer"]
            print(f"-- 2. eight answers per question ({len(qs)} questions): edgescale maj@8 {e['s_per_q']:.2f}s/q "
                  f"({e['samples']:.0f} samples) vs peer 8 requests {p['s_per_q']:.2f}s/q ({p['samples']:.0f}): "
                  f"{p['s_per_q'] / e['s_per_q']:.2f}x faster (target >= 1.3x)", flush=True)
        if 3 in only:
            d = deadline_share(ours.url, questions[:16])
            print(f"-- 3. deadline_ms 2000, 8 concurrent clients, 16 requests: {d['share']:.0%} answered within "
                  f"2.2 s (target >= 95%); slowest {d['max']:.2f}s; {d['deadline_hit']:.0%} ended by the deadline",
                  flush=True)
    finally:
        ours.stop()
        peer.stop()
    lines = [line for line in ours.lines if re.match(r"^(error|Traceback)", line)]
    if lines:
        print("edgescale serve reported:", *lines, sep="\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
