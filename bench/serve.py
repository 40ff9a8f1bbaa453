"""`edgescale serve` against a peer OpenAI server, side by side in one run.

The peer is llama.cpp's own C++ server (``--llama-server PATH``: built offline by
``../shared/tools/build-llama-server.sh``; ``-np 8`` slots, each its own KV stream,
continuous batching) or llama-cpp-python's (``python -m llama_cpp.server``, one
sequence at a time, no ``n``; needs its server extras: ``pip install fastapi uvicorn
sse-starlette starlette-context pydantic-settings``). Same GGUF file (``--model``: a
path, so that edgescale runs that very file), same threads, both on 127.0.0.1, one
server under load at a time (the other idle), alternating over ``--rounds``, medians.
The load is a mix of chat questions (GSM8K and ARC-Easy, zero-shot), ``max_tokens``
64, new questions for every load (both servers the same ones: a prompt a server has
read before would come from its prompt cache):

1. single-sample requests (greedy) from 1, 4 and 8 concurrent clients: completions/s
   and p50/p95 latency;
2. eight answers per question: edgescale ``strategy: maj@8`` (one request) against
   llama-server's ``n: 8`` (one request; llama-cpp-python has no ``n``: 8 requests at
   once); time per question, same number of samples;
3. deadlines: 8 concurrent clients with ``deadline_ms: 2000`` (edgescale): the share
   answered within 2.2 s as the client measures it (target >= 95%);
4. eight clients each asking eight answers at once: edgescale ``maj@8`` against
   llama-server ``n: 8`` (llama-cpp-python: 64 requests, 8 clients at a time); time per
   question.

Every load is bounded (fixed request counts, per-request timeouts).

    python bench/serve.py [--llama-server PATH] [--model PATH|NAME] [--requests 24] [--questions 6]
                          [--rounds 1] [--threads 2] [--only 1,2,3,4] [--serve-args "--deterministic"]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Peer:
    """A peer server on a free loopback port: ``python -m llama_cpp.server``, or llama.cpp's
    own ``llama-server`` (``server`` set) with ``slots`` slots, each its own KV stream."""

    def __init__(self, model: Path, threads: int, n_ctx: int = 4096, server: Path | None = None,
                 slots: int = 8) -> None:
        self.port = free_port()
        self.has_n = server is not None
        self.name = f"llama-server -np {slots}" if server is not None else "llama-cpp-python"
        if server is not None:
            cmd = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-t",
                   str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(n_ctx * slots),
                   "--no-webui", "--log-disable"]
        else:
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
        raise RuntimeError(f"{self.name} did not start (llama-cpp-python: are its server extras installed?)")

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
        done = list(pool.map(lambda q: chat(url, q, **extra), questions))
    wall = time.perf_counter() - t0
    lat = sorted(t for t, _ in done)
    tokens = sum(body["usage"]["completion_tokens"] for _, body in done)
    return {"qps": len(questions) / wall, "tok_s": tokens / wall, "tokens": tokens / len(questions),
            "p50": statistics.median(lat),
            "p95": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]}


def eight_samples(url: str, q: str, how: str) -> int:
    """Eight samples of one question: edgescale's maj@8, a peer's ``n: 8``, or 8 requests."""
    if how == "maj@8":
        _, body = chat(url, q, strategy="maj@8", temperature=0.8)
        return int(body["edgescale"]["samples"])
    if how == "n":
        _, body = chat(url, q, n=8, temperature=0.8)
        return len(body["choices"])
    with ThreadPoolExecutor(8) as pool:
        return len(list(pool.map(lambda seed: chat(url, q, temperature=0.8, seed=seed), range(8))))


def eight_answers(url: str, questions: Sequence[str], how: str, clients: int = 1) -> dict[str, float]:
    """Eight samples per question, ``clients`` questions at a time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        samples = sum(pool.map(lambda q: eight_samples(url, q, how), questions))
    return {"s_per_q": (time.perf_counter() - t0) / len(questions), "samples": samples / len(questions)}


def deadline_share(url: str, questions: Sequence[str], deadline_ms: int = 2000) -> dict[str, float]:
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: chat(url, q, deadline_ms=deadline_ms), questions))
    within = sum(t <= deadline_ms / 1000 * 1.1 for t, _ in got)
    hit = sum(body["choices"][0]["finish_reason"] == "deadline" for _, body in got)
    return {"share": within / len(got), "max": max(t for t, _ in got), "deadline_hit": hit / len(got)}


class Fresh:
    """Questions handed out once each: both servers get the same ones, in the same order."""

    def __init__(self, pool: Sequence[str]) -> None:
        self.pool = list(pool)
        self.next = {"e": 0, "p": 0}

    def take(self, n: int, who: str) -> list[str]:
        start = self.next[who]
        self.next[who] = start + n
        out = self.pool[start : start + n]
        if len(out) < n:
            raise RuntimeError("not enough questions loaded")
        return out


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
    ap.add_argument("--llama-server", type=Path, default=None, help="llama-server binary: the peer (default: "
                    "llama-cpp-python's server)")
    ap.add_argument("--model", default=None, help="GGUF path or catalog name (default: the packaged SmolLM2 Q4_1 "
                    "file); edgescale serves this very file")
    ap.add_argument("--requests", type=int, default=24, help="questions per load test")
    ap.add_argument("--questions", type=int, default=6, help="questions for the eight-answer comparisons")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="1,2,3,4")
    ap.add_argument("--serve-args", default="", help="more `edgescale serve` arguments, e.g. --deterministic")
    args = ap.parse_args()
    only = {int(x) for x in args.only.split(",")}
    model = resolve_model(args.model or "smollm2-135m")  # a path: edgescale serves the file as it is
    # every load gets questions of its own (both servers the same ones): a prompt a server has
    # already read would be served from its prompt cache, and the comparison would measure that
    need = args.rounds * (3 * args.requests + args.questions + 8 + 16)
    half = need // 2
    items = [*load("gsm8k", limit=half), *load("arc-easy", limit=need - half)]
    pool = [prompt_for(it, "zero-shot") for it in items]
    pool = [pool[i // 2 + (i % 2) * half] for i in range(len(pool))]  # interleave the two sets
    fresh = Fresh(pool)
    peer = Peer(model, args.threads, n_ctx=1024 if args.llama_server else 4096, server=args.llama_server)
    print(f"{model.name}, {args.threads} threads, {args.requests} chat questions a load (GSM8K + ARC-Easy, new ones "
          f"each time), max_tokens "
          f"{MAX_TOKENS}, {args.rounds} round(s); peer: {peer.name}; edgescale serve --parallel 8 "
          f"{args.serve_args}".rstrip(), flush=True)
    ours = ServerProcess(["--model", str(model), "--threads", str(args.threads), "--parallel", "8",
                          "--max-tokens-limit", "4096", *args.serve_args.split()],
                         env={"EDGESCALE_THREADS": str(args.threads)})
    many = "n" if peer.has_n else "8 requests"
    try:
        chat(ours.url, "Hi")  # warm both (first-request allocations)
        chat(peer.url, "Hi")
        if 1 in only:
            print("-- 1. single-sample requests (greedy): completions/s, p50 / p95 latency", flush=True)
            for clients in (1, 4, 8):
                res = alternate(args.rounds, {
                    "edgescale": lambda c=clients: load_test(ours.url, fresh.take(args.requests, "e"), c,
                                                             temperature=0),
                    "peer": lambda c=clients: load_test(peer.url, fresh.take(args.requests, "p"), c, temperature=0),
                })
                e, p = res["edgescale"], res["peer"]
                print(f"   {clients} client(s): edgescale {e['qps']:.2f}/s ({e['tok_s']:.0f} tok/s, {e['tokens']:.0f} "
                      f"a completion) p50 {e['p50']:.2f}s p95 {e['p95']:.2f}s | peer {p['qps']:.2f}/s "
                      f"({p['tok_s']:.0f} tok/s, {p['tokens']:.0f}) p50 {p['p50']:.2f}s p95 {p['p95']:.2f}s | "
                      f"completions {e['qps'] / p['qps']:.2f}x, tokens {e['tok_s'] / p['tok_s']:.2f}x, p95 "
                      f"{e['p95'] / p['p95']:.2f}x (target >= 1.0x)", flush=True)
        for n, clients in ((2, 1), (4, 8)):
            if n not in only:
                continue
            count = args.questions if clients == 1 else 8
            res = alternate(args.rounds, {
                "edgescale": lambda c=clients, k=count: eight_answers(ours.url, fresh.take(k, "e"), "maj@8", c),
                "peer": lambda c=clients, k=count: eight_answers(peer.url, fresh.take(k, "p"),
                                                                 "n" if peer.has_n else "8", c),
            })
            e, p = res["edgescale"], res["peer"]
            print(f"-- {n}. eight answers per question, {clients} client(s), {count} questions: edgescale maj@8 "
                  f"{e['s_per_q']:.2f}s/q ({e['samples']:.0f} samples) vs peer {many} {p['s_per_q']:.2f}s/q "
                  f"({p['samples']:.0f}): {p['s_per_q'] / e['s_per_q']:.2f}x faster"
                  + (" (target >= 1.5x)" if clients > 1 else ""), flush=True)
        if 3 in only:
            d = deadline_share(ours.url, fresh.take(16, "e"))
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
