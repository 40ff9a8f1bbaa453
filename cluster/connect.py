"""Joining a Ray cluster (or starting a local one) for `batch --ray` and `bench --ray`.

Ray is an optional extra (``pip install 'edgescale[cluster]'``) and is imported
only here and in the other modules of this package, only when ``--ray`` is given.

Addresses: ``local`` (``--ray`` alone) starts a Ray instance on this machine for
the job; ``auto`` joins the cluster ``ray start`` left running here (Ray's own
discovery, ``RAY_ADDRESS`` included); ``HOST:PORT`` joins that cluster's head.
A local instance, or a cluster whose head is on a loopback address, keeps every
Ray server on loopback (127.0.0.1): Ray otherwise binds the machine's network
address even for a one-machine cluster.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgescale.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from types import ModuleType

INSTALL_HINT = "pip install 'edgescale[cluster]'"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is 127.0.0.1
RETRIES = 2  # times Ray restarts a dead worker and retries its unfinished lines


@dataclass(frozen=True)
class ClusterOptions:
    """How a job runs on Ray: where, on how many actors, with how many CPU threads each."""

    address: str = "local"  # local | auto | HOST:PORT
    actors: int | None = None  # None: as many as the cluster's CPUs hold
    threads_per_actor: int = 1
    retries: int = RETRIES

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise UsageError(f"--actors must be at least 1, got {self.actors}")
        if self.threads_per_actor < 1:
            raise UsageError(f"--threads-per-actor must be at least 1, got {self.threads_per_actor}")
        if not self.address.strip():
            raise UsageError("--ray needs an address: local, auto or HOST:PORT")


def require_ray() -> ModuleType:
    """The ``ray`` module, or a one-line error naming the install command."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def is_loopback(address: str) -> bool:
    """Whether the cluster at ``address`` runs on this machine's loopback (``auto``: the
    address Ray's discovery would find, from ``RAY_ADDRESS`` or the file ``ray start`` writes)."""
    if address == "auto":
        found = _discovered_address()
        if found is None:
            return False
        address = found
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    return address == "local" or host in ("localhost", "::1") or host.startswith("127.")


def _discovered_address() -> str | None:
    """What ``ray.init(address="auto")`` joins, read the way Ray reads it, without importing
    Ray (whose node address is fixed when it is imported)."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        return (Path(tmp) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


@contextmanager
def ray_cluster(options: ClusterOptions) -> Iterator[ModuleType]:
    """Ray, initialised for this job and shut down after it (a local instance stops with it).
    Meanwhile ``sys.stdout`` is stderr: Ray prints its notices there, and a job's output
    must go to the stdout it captured before."""
    if is_loopback(options.address):
        os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray reads its constants
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = require_ray()
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                                  configure_logging=True)
    if options.address != "local":
        kwargs["address"] = options.address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot join the Ray cluster at {options.address}: {first_line(exc)}") from None
    try:
        with redirect_stdout(sys.stderr):  # Ray prints task retries and errors on stdout
            yield ray
    finally:
        ray.shutdown()


def actor_count(ray: ModuleType, options: ClusterOptions) -> int:
    """``--actors``, checked against the CPUs the cluster has (an actor that can never be
    placed would wait forever); default: as many actors as the CPUs hold."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    fit = cpus // options.threads_per_actor
    if fit < 1:
        raise UsageError(f"the Ray cluster has {cpus} CPU(s); an actor with --threads-per-actor "
                         f"{options.threads_per_actor} does not fit")
    if options.actors is None:
        return fit
    if options.actors > fit:
        raise UsageError(f"--actors {options.actors} x --threads-per-actor {options.threads_per_actor} needs "
                         f"{options.actors * options.threads_per_actor} CPUs; the Ray cluster has {cpus}")
    return options.actors


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
