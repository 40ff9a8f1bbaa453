"""`bench --ray` against the one-machine bench, side by side in one run, on this box.

Three ways to spend the same CPUs on the same questions (GSM8K, zero-shot, the
default model, ``--strategies single,maj@8``):

  local   one process, --threads T (no Ray)
  2x1     a local Ray instance, 2 actors with 1 thread each (one question each at a time)
  1x2     a local Ray instance, 1 actor with 2 threads

For each: queries/s over the run, and Ray's costs: starting Ray and checking the
node (``init``), starting the actors and loading the model (``actors``), and the
round trip of one call carrying a real maj@8 record through Ray (``call ms``:
scheduling plus serialisation, measured with an actor that echoes the record).
Every run starts with an empty store (nothing is resumed). The last column counts
the queries whose answer or token count differs from the first run's: Ray changes
nothing, but a run with another thread count, or whose workers each see other
questions (another prefix cache), may round differently, and sampled answers then
part ways (measured: 2x1 against local, 101 of 128).

    python bench/cluster.py [--questions 64] [--max-tokens 128] [--threads 2] [--only local,2x1,1x2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgescale.cluster.connect import ClusterOptions, actor_count, ray_cluster  # noqa: E402
from edgescale.cluster.jobs import RayBench  # noqa: E402
from edgescale.cluster.pool import check_nodes  # noqa: E402
from edgescale.evals.bench import BenchConfig, BenchRun, load_items, parse_strategies, run_bench  # noqa: E402

CONFIGS = {"local": None, "2x1": (2, 1), "1x2": (1, 2)}


class Echo:
    def echo(self, record: Any) -> Any:
        return record


def call_ms(ray: Any, record: dict[str, Any], calls: int = 200) -> float:
    """Median round trip of one actor call that carries ``record`` there and back."""
    actor = ray.remote(Echo).options(num_cpus=0).remote()
    ray.get(actor.echo.remote(record))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        ray.get(actor.echo.remote(record))
        times.append((time.perf_counter() - t0) * 1000)
    ray.kill(actor)
    return statistics.median(times)


def run_one(name: str, config: BenchConfig, items: Any, threads: int) -> dict[str, Any]:
    shape = CONFIGS[name]
    t0 = time.perf_counter()
    if shape is None:
        run = run_bench(replace(config, threads=threads), items=items)
        return {"name": name, "run": run, "wall": time.perf_counter() - t0, "init": 0.0, "actors": 0.0,
                "call_ms": 0.0}
    actors, per = shape
    options = ClusterOptions(address="local", actors=actors, threads_per_actor=per)
    with ray_cluster(options) as ray:
        n = actor_count(ray, options)
        nodes = check_nodes(ray, config.model, config.backend)
        init = time.perf_counter() - t0
        executor = RayBench(ray, options, n, lambda msg: None, nodes)
        cfg = replace(config, threads=per)
        run = run_bench(cfg, items=items, executor=executor, model=str(nodes[0]["model"]))
        wall = time.perf_counter() - t0
        record = next(r for r in run.records["maj@8"])
        ms = call_ms(ray, record)
    return {"name": name, "run": run, "wall": wall, "init": init, "actors": executor.ready_s, "call_ms": ms,
            "record_bytes": len(json.dumps(record))}


def answers(run: BenchRun) -> dict[tuple[str, str], Any]:
    return {(r["item_id"], label): (r["answer"], r["result"]["stats"]["total_tokens"])
            for label, rs in run.records.items() for r in rs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="threads of the one-process run")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--only", default=",".join(CONFIGS))
    args = ap.parse_args()
    os.environ.setdefault("EDGESCALE_THREADS", str(args.threads))
    names = [n for n in args.only.split(",") if n]
    results = []
    for name in names:
        with tempfile.TemporaryDirectory() as out:
            config = BenchConfig(dataset=args.dataset, strategies=parse_strategies("single,maj@8"),
                                 limit=args.questions, max_tokens=args.max_tokens, out=Path(out))
            items = load_items(config)
            res = run_one(name, config, items, args.threads)
            results.append(res)
            q = len(items) * 2
            print(f"{name}: {q} queries in {res['wall']:.1f} s ({q / res['wall']:.3f} queries/s); "
                  f"init {res['init']:.1f} s, actors {res['actors']:.1f} s, call {res['call_ms']:.2f} ms "
                  f"with a {res.get('record_bytes', 0)}-byte record",
                  flush=True)
    base = results[0]
    print(f"\n{args.questions} {args.dataset} questions x single,maj@8, max_tokens {args.max_tokens}\n")
    print("| run | queries/s | vs " + base["name"] + " | after start-up, queries/s | wall s | Ray init s | "
          "actors ready s | call ms | Ray s/query | answer or tokens differ from " + base["name"] + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        q = len(r["run"].items) * 2
        ray_s = (r["init"] + r["actors"]) / q + r["call_ms"] / 1000
        mine, theirs = answers(r["run"]), answers(base["run"])
        same = sum(mine[k] != theirs[k] for k in theirs)
        steady = q / (r["wall"] - r["init"] - r["actors"])
        print(f"| {r['name']} | {q / r['wall']:.3f} | {base['wall'] / r['wall']:.2f}x | {steady:.3f} | "
              f"{r['wall']:.1f} | "
              f"{r['init']:.1f} | {r['actors']:.1f} | {r['call_ms']:.2f} | {ray_s:.3f} | {same} of {len(theirs)} |")


if __name__ == "__main__":
    main()
