"""What runs on the Ray nodes: a per-node check, and the worker actors.

Each worker actor loads the model once, with an explicit thread count (Ray sets
``OMP_NUM_THREADS=1`` in its workers; llama.cpp takes its count from us), and
runs the local scheduler: a batch worker answers one input line per call, up to
``lanes`` calls at once (a threaded actor, so the calls share the decode loop);
a bench worker runs one question's strategies per call, exactly as
``edgescale bench`` does on one machine. Nothing here forks: the llama.cpp
build check, a subprocess on one machine, runs as a Ray task of its own on each
node (:func:`check_node`) before the actors start.

These classes are plain Python; :mod:`edgescale.cluster.pool` makes them Ray actors.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Sequence

from edgescale.errors import EdgescaleError

if TYPE_CHECKING:  # pragma: no cover
    from edgescale.api import Runtime, RuntimeSpec
    from edgescale.evals.bench import BenchJob, BenchStrategy


def node_name() -> str:
    """This node as error messages name it: host name and Ray's address for it."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # outside Ray, or before it is connected
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def on_node(exc: EdgescaleError) -> EdgescaleError:
    """The same error, its message naming the node it happened on."""
    named = type(exc)(f"on node {node_name()}: {exc}")
    named.exit_code = exc.exit_code
    return named


def check_node(model: str | None, backend: str) -> dict[str, Any]:
    """On one node: the model resolves there, and (llama.cpp) the build loads and decodes on
    its CPU. A build that dies of a signal takes this task's worker with it, which the
    driver reports as a crash on that node."""
    from edgescale.loader import default_backends

    try:
        path = default_backends().get(backend).resolve(model)
    except EdgescaleError as exc:
        raise on_node(exc) from None
    if default_backends().canonical(backend) == "llama.cpp":
        from edgescale.devices.buildcheck import probe_in_process

        probe_in_process(path)
    return {"node": node_name(), "model": path.name}


class _Worker:
    """What every worker answers: its runtime (subclasses load it) and where it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def runtime(self) -> Runtime:
        raise NotImplementedError

    def hello(self) -> dict[str, Any]:
        """Load the model; say where and with what this worker runs."""
        rt = self.runtime()
        return {"node": node_name(), "pid": os.getpid(), "model": rt.model_name,
                "threads": rt.engine.n_threads}


class BatchWorker(_Worker):
    """Answers `edgescale batch` lines, ``spec.lanes`` at a time in one decode loop
    (``"auto"``: as many as ``--parallel auto`` picks for this worker's device)."""

    def __init__(self, spec: RuntimeSpec, defaults: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.defaults = defaults
        self._rt: Runtime | None = None

    def runtime(self) -> Runtime:
        """The loaded model and its decode loop (loaded on the first call, again after a restart)."""
        with self._lock:
            if self._rt is None:
                self._rt = self._load()
            return self._rt

    def _load(self) -> Runtime:
        from edgescale.api import Runtime
        from edgescale.settings import CLI_NAMES, ask_settings

        try:
            return Runtime.open(self.spec, ask_settings(**self.defaults, names=CLI_NAMES))
        except EdgescaleError as exc:
            raise on_node(exc) from None

    def hello(self) -> dict[str, Any]:
        return {**super().hello(), "lanes": self.runtime().scheduler_config.max_running}

    def answer(self, n: int, raw: bytes, defaults: dict[str, Any]) -> dict[str, Any]:
        from edgescale.batch import submit_line

        return submit_line(self.runtime(), n, raw, defaults).record()


class BenchWorker(_Worker):
    """Runs `edgescale bench` questions: every pending strategy of one question per call, in a
    :class:`~edgescale.evals.bench.BenchSession` made from the job's settings."""

    def __init__(self, job: BenchJob) -> None:
        from edgescale.evals.bench import BenchSession

        super().__init__()
        self.job = job
        self.session = BenchSession(job.config)

    def runtime(self) -> Runtime:
        with self._lock:
            try:
                return self.session.rt()
            except EdgescaleError as exc:
                raise on_node(exc) from None

    def question(self, index: int, todo: Sequence[BenchStrategy]) -> list[tuple[str, dict[str, Any]]]:
        """(strategy label, record) of each strategy in ``todo``, in that order."""
        from edgescale.evals.bench import question_records

        return [(strat.label, record) for strat, record in question_records(self.session, self.job, index, todo)]
