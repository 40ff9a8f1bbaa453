"""`edgescale batch --ray` and `edgescale bench --ray`: the driver side.

The driver reads the input, hands lines (batch) or questions (bench) to worker
actors as they have room, and writes results in input order: the same records,
through the same writer or bench store, as the one-machine path, so output
files stay resumable (``--resume`` / the same ``--out``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edgescale.cluster.connect import ClusterOptions, actor_count, ray_cluster
from edgescale.cluster.pool import ActorPool, Failed, check_nodes, in_order
from edgescale.cluster.workers import BatchWorker, BenchWorker
from edgescale.errors import EdgescaleError

if TYPE_CHECKING:  # pragma: no cover
    from edgescale.api import RuntimeSpec

WINDOW_PER_SLOT = 2  # calls submitted but not yet written, per call an actor takes at once


def batch_on_ray(options: ClusterOptions, spec: RuntimeSpec, defaults: dict[str, Any],
                 lines: Iterable[tuple[int, bytes]], write: Callable[[dict[str, Any]], None],
                 notify: Callable[[str], None]) -> None:
    """Answer ``(line number, bytes)`` lines on the cluster; ``write`` gets each record, in order."""
    from edgescale.batch import error_record, line_id

    with ray_cluster(options) as ray:
        n = actor_count(ray, options)
        nodes = check_nodes(ray, spec.model, spec.backend)
        per_actor = spec.lanes if isinstance(spec.lanes, int) else 0  # auto: as many as each actor's hello says
        pool = ActorPool(ray, BatchWorker, (spec, defaults), n=n, per_actor=per_actor, options=options)
        try:
            _announce(notify, pool.hello(), nodes, options)
            defaults_ref = ray.put(defaults)
            calls = (((num, raw), _answer_call(num, raw, defaults_ref)) for num, raw in lines)
            for (num, raw), value in in_order(pool, calls, window=WINDOW_PER_SLOT * sum(pool.limit)):
                write(error_record(num, line_id(raw), value.error) if isinstance(value, Failed) else value)
        except BaseException:
            pool.kill()  # Ctrl-C or a fatal error: stop the cluster job now
            raise


def _answer_call(num: int, raw: bytes, defaults_ref: Any) -> Callable[[Any], Any]:
    return lambda actor: actor.answer.remote(num, raw, defaults_ref)


class RayBench:
    """A ``run_bench`` executor: the pending questions on worker actors, records back in question order."""

    def __init__(self, ray: Any, options: ClusterOptions, actors: int, notify: Callable[[str], None],
                 nodes: Sequence[dict[str, Any]]) -> None:
        self.ray, self.options, self.actors, self.notify, self.nodes = ray, options, actors, notify, nodes
        self.ready_s = 0.0  # actors started and models loaded, seconds

    def __call__(self, job: Any, pending: Sequence[tuple[int, Sequence[Any]]],
                 emit: Callable[[int, Any, dict[str, Any]], None]) -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        pool = ActorPool(self.ray, BenchWorker, (job,), n=self.actors, per_actor=1, options=self.options)
        failed: list[str] = []
        try:
            infos = pool.hello()
            self.ready_s = time.perf_counter() - t0
            _announce(self.notify, infos, self.nodes, self.options)
            by_label = {s.label: s for s in job.config.strategies}
            calls = (((i, todo), _question_call(i, todo)) for i, todo in pending)
            for (i, _todo), value in in_order(pool, calls, window=WINDOW_PER_SLOT * self.actors):
                if isinstance(value, Failed):
                    failed.append(f"question {job.config.offset + i} ({job.items[i].id}): {value.error}")
                    continue
                for label, record in value:
                    emit(i, by_label[label], record)
        except BaseException:
            pool.kill()
            raise
        if failed:
            raise EdgescaleError(f"{len(failed)} question(s) failed on every try, the first: {failed[0]}; "
                                 "the store keeps the rest: rerun with the same --out to retry them")


def _question_call(index: int, todo: Sequence[Any]) -> Callable[[Any], Any]:
    return lambda actor: actor.question.remote(index, list(todo))


def bench_on_ray(options: ClusterOptions, config: Any, items: Sequence[Any], notify: Callable[[str], None],
                 on_progress: Any = None) -> Any:
    """``run_bench`` with its queries on the cluster; each actor runs with ``threads_per_actor`` threads."""
    from dataclasses import replace

    from edgescale.evals.bench import run_bench

    with ray_cluster(options) as ray:
        n = actor_count(ray, options)
        nodes = check_nodes(ray, config.model, config.backend)
        config = replace(config, threads=options.threads_per_actor)
        executor = RayBench(ray, options, n, notify, nodes)
        return run_bench(config, on_progress=on_progress, items=items, executor=executor,
                         model=str(nodes[0]["model"]))


def _announce(notify: Callable[[str], None], infos: Sequence[dict[str, Any]], nodes: Sequence[dict[str, Any]],
              options: ClusterOptions) -> None:
    lanes = sorted({int(i.get("lanes", 1)) for i in infos})
    notify(f"ray: {len(infos)} actor(s) x {options.threads_per_actor} thread(s) on {len(nodes)} node(s), "
           f"model {nodes[0]['model'] if nodes else '?'}, {'/'.join(map(str, lanes))} call(s) at once per actor")
