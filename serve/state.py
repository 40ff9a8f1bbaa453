"""What the server knows between requests: the runtime (once loaded), its status,
the requests in flight and the counters behind ``/metrics``."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgescale.serve.protocol import Defaults, Limits

if TYPE_CHECKING:
    from edgescale.api import Runtime
    from edgescale.scheduler.request import Request


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    grace_s: float = 10.0  # SIGTERM: how long in-flight requests may take to finish
    max_connections: int = 256  # open connections at most (uvicorn's limit_concurrency): more get 503
    read_timeout_s: float = 30.0  # a request's head, and then its body, must arrive within this
    max_header_bytes: int = 16384  # request line and headers at most (larger: 400)
    defaults: Defaults = Defaults()
    limits: Limits = Limits()


@dataclass
class Counters:
    requests: dict[tuple[str, int], int] = field(default_factory=dict)  # (endpoint, status) -> count
    completions: int = 0
    deadline_misses: int = 0  # responses whose deadline hit before they finished
    disconnects: int = 0  # clients gone before their answer: their sequences cancelled
    queue_full: int = 0
    mean_wall_s: float = 0.0  # moving average of a completion's wall time (for Retry-After)
    delivery_s: float = 0.0  # moving average: an answer ready -> its last byte sent


class ServerState:
    """Thread-safe: the model loads in a thread of its own while the server answers /health."""

    def __init__(self, config: ServeConfig, model_id: str) -> None:
        self.config = config
        self.model_id = model_id
        self.runtime: Runtime | None = None
        self.status = "loading"  # loading | ready | failed | stopping
        self.error: Exception | None = None
        self.counters = Counters()
        self.fingerprint = "edgescale"
        self._in_flight: dict[int, Request] = {}  # by id(): requests are not hashable
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def ready(self, runtime: Runtime, fingerprint: str) -> None:
        with self._lock:
            if self.status == "stopping":
                runtime.close()
                return
            self.runtime, self.fingerprint, self.status = runtime, fingerprint, "ready"

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self.status, self.error = "failed", exc

    def cancel_all(self) -> None:
        """End every query in flight at the next step (each still answers, "cancelled")."""
        with self._lock:
            pending = list(self._in_flight.values())
        for request in pending:
            request.cancel()

    def stop(self) -> None:
        """Cancel whatever is still in flight and close the runtime (at shutdown, after the grace)."""
        with self._lock:
            self.status = "stopping"
            pending, self._in_flight = list(self._in_flight.values()), {}
            runtime, self.runtime = self.runtime, None
        for request in pending:
            request.cancel()
        if runtime is not None:
            runtime.close()

    # -- requests ----------------------------------------------------------------------
    def track(self, request: Request) -> None:
        with self._lock:
            self._in_flight[id(request)] = request

    def untrack(self, request: Request) -> None:
        with self._lock:
            self._in_flight.pop(id(request), None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def count(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, status)
            self.counters.requests[key] = self.counters.requests.get(key, 0) + 1

    def request_counts(self) -> list[tuple[tuple[str, int], int]]:
        with self._lock:
            return sorted(self.counters.requests.items())

    def finished(self, wall_s: float, deadline_hit: bool) -> None:
        with self._lock:
            c = self.counters
            c.completions += 1
            c.deadline_misses += deadline_hit
            c.mean_wall_s = wall_s if c.completions == 1 else 0.8 * c.mean_wall_s + 0.2 * wall_s

    def delivered(self, seconds: float) -> None:
        with self._lock:
            c = self.counters
            c.delivery_s = seconds if c.delivery_s == 0.0 else 0.8 * c.delivery_s + 0.2 * seconds

    def decode_deadline(self, deadline_s: float) -> float:
        """The deadline the query gets: the request's, less the time recent answers took to
        reach the wire (so that the response, not only the answer, is in time), at most
        a quarter of it."""
        return deadline_s - min(self.counters.delivery_s, deadline_s / 4)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead of it, drained at the
        recent pace (at least 1)."""
        runtime = self.runtime
        if runtime is None:
            return 1
        sched = runtime.scheduler
        lanes = max(1, sched.config.max_running)
        return max(1, math.ceil(sched.queued / lanes * max(self.counters.mean_wall_s, 0.1)))
