"""Worker actors on a Ray cluster, and calls to them whose results come back in submission order.

Faults are Ray's: every actor is created with ``max_restarts`` and
``max_task_retries`` (``ClusterOptions.retries``), so when a worker process dies
Ray starts it again (on another node if its node is gone), the new process loads
the model, and the calls it had not finished run again there. A call still
failing after its last retry comes back as :class:`Failed`, which the caller
turns into an error record; its actor is then dropped from the pool. Results
are only ever written by the driver, in order, once each: a retried call cannot
write twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, TypeVar

from edgescale.cluster.connect import ClusterOptions, first_line
from edgescale.cluster.workers import check_node
from edgescale.errors import BackendUnavailable, EdgescaleError, UsageError

T = TypeVar("T")
MAX_PER_ACTOR = 64


@dataclass(frozen=True)
class Failed:
    """A call that failed on every try (its worker died each time, or it raised)."""

    error: str


class ActorPool:
    """``n`` actors of one class, each taking up to ``per_actor`` calls at once (0: as many as
    its ``hello`` says)."""

    def __init__(self, ray: ModuleType, cls: type, args: tuple[Any, ...], *, n: int, per_actor: int,
                 options: ClusterOptions) -> None:
        self.ray = ray
        self.limit = [per_actor or MAX_PER_ACTOR] * n  # calls at once per actor (hello() may say fewer)
        self.retries = options.retries
        remote = ray.remote(cls).options(
            num_cpus=options.threads_per_actor, max_restarts=options.retries, max_task_retries=options.retries,
            max_concurrency=per_actor or MAX_PER_ACTOR,
            # the build was checked on every node by check_nodes(): no probe subprocess inside actors
            runtime_env={"env_vars": {"EDGESCALE_BUILD_CHECK": "0"}},
        )
        self.actors = [remote.remote(*args) for _ in range(n)]
        self.alive = [True] * n
        self.busy = [0] * n
        self._owner: dict[Any, int] = {}  # call ref -> actor index

    def hello(self) -> list[dict[str, Any]]:
        """Every actor loaded its model: where each one runs and how many calls it takes at once
        (errors name the node)."""
        infos = self.ray.get([a.hello.remote() for a in self.actors])  # the actors load at once
        self.limit = [int(info.get("lanes") or limit) for info, limit in zip(infos, self.limit)]
        return infos

    def submit(self, call: Callable[[Any], Any]) -> Any:
        """``call(actor)`` on the least busy live actor, waiting for a free slot."""
        self._reap(block=False)
        while True:
            free = [i for i in range(len(self.actors)) if self.alive[i] and self.busy[i] < self.limit[i]]
            if free:
                break
            if not any(self.alive):
                raise UsageError("every Ray worker died; see the error records of the failed lines")
            self._reap(block=True)
        i = min(free, key=lambda j: self.busy[j])
        ref = call(self.actors[i])
        self.busy[i] += 1
        self._owner[ref] = i
        return ref

    def result(self, ref: Any) -> Any:
        """The call's value, or :class:`Failed`."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._drop(ref)
            tries = 1 + self.retries
            return Failed(f"its Ray worker died on every try ({tries} {'try' if tries == 1 else 'tries'}): "
                          f"{first_line(exc)}")
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            return Failed(f"{type(cause).__name__}: {first_line(cause)}")
        finally:
            self._release(ref)

    def ready(self, ref: Any) -> bool:
        done, _ = self.ray.wait([ref], timeout=0)
        return bool(done)

    def kill(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)

    def _release(self, ref: Any) -> None:
        i = self._owner.pop(ref, None)
        if i is not None:
            self.busy[i] -= 1

    def _drop(self, ref: Any) -> None:
        i = self._owner.get(ref)
        if i is not None:
            self.alive[i] = False

    def _reap(self, block: bool) -> None:
        """Free the slots of finished calls (their values stay in the object store for ``result``)."""
        refs = list(self._owner)
        if not refs:
            return
        done, _ = self.ray.wait(refs, num_returns=1 if block else len(refs), timeout=None if block else 0)
        for ref in done:
            self._release(ref)


def check_nodes(ray: ModuleType, model: str | None, backend: str) -> list[dict[str, Any]]:
    """On every live node with CPUs: the model is there and llama.cpp runs on its CPU.
    One line naming the node otherwise."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(check_node)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    refs = [(n, task.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(model, backend)) for n in nodes]
    out = []
    for node, ref in refs:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, EdgescaleError):
                raise cause from None
            raise UsageError(f"on node {node.get('NodeManagerAddress')}: {first_line(exc)}") from None
        except ray.exceptions.WorkerCrashedError:
            raise BackendUnavailable(f"llama.cpp dies on node {node.get('NodeManagerAddress')} (its worker process "
                                     "crashed loading the model); rebuild llama.cpp there: "
                                     "`bash scripts/install.sh --rebuild` (or `--portable`)") from None
    return out


def in_order(pool: ActorPool, calls: Iterable[tuple[T, Callable[[Any], Any]]],
             window: int) -> Iterator[tuple[T, Any]]:
    """Submit ``(key, call)`` pairs as slots free up; yield ``(key, value or Failed)`` in
    submission order, with at most ``window`` calls submitted and not yet yielded."""
    pending: deque[tuple[T, Any]] = deque()
    for key, call in calls:
        pending.append((key, pool.submit(call)))
        while len(pending) >= window or (pending and pool.ready(pending[0][1])):
            head, ref = pending.popleft()
            yield head, pool.result(ref)
    while pending:
        head, ref = pending.popleft()
        yield head, pool.result(ref)

