"""For tests that run queries through the scheduler: a deterministic clock for its loop, and
waits that fail with a message instead of hanging the suite."""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from edgescale.api import Runtime
from edgescale.runtime.engine import DecodeSession, Engine, Feed, Logits
from edgescale.scheduler.config import SchedulerConfig
from edgescale.scheduler.loop import Scheduler
from edgescale.strategies.result import Result

WAIT_S = 120.0  # the longest a test waits for a query, a step or a loop to stop


class StepClock:
    """Advances ``tick`` seconds every time it is read: a deterministic stand-in for time (the
    scheduler's loop reads it a fixed number of times a step, whatever the machine's speed).
    Reads from several threads each get their own tick."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self._reads = itertools.count(1)

    def __call__(self) -> float:
        return next(self._reads) * self.tick


class DecodeClock:
    """Time that passes only while an engine decodes: ``step_s`` a decode call, whatever the
    machine's speed. The engine :meth:`wrap` returns advances it (a deadline test then checks
    the scheduler's own arithmetic: its step estimates, probe reserve and sweeps)."""

    def __init__(self, step_s: float = 0.02) -> None:
        self.step_s = step_s
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self) -> None:
        with self._lock:
            self.now += self.step_s

    def wrap(self, engine: Engine) -> Engine:
        """``engine``, its sessions' decodes advancing this clock."""
        return _TimedEngine(engine, self)  # type: ignore[return-value]


class _TimedEngine:
    def __init__(self, engine: Engine, clock: DecodeClock) -> None:
        self._engine = engine
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def session(self, **kwargs: Any) -> DecodeSession:
        return _TimedSession(self._engine.session(**kwargs), self._clock)  # type: ignore[return-value]


class _TimedSession:
    def __init__(self, session: DecodeSession, clock: DecodeClock) -> None:
        self._session = session
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        rows = self._session.decode(feeds)
        self._clock.advance()
        return rows


@contextmanager
def scheduler_on(engine: Engine, clock: Callable[[], float], **config: Any) -> Iterator[Scheduler]:
    """A scheduler over ``engine`` whose loop reads ``clock``; on exit its loop stops, or the
    test fails."""
    scheduler = Scheduler(engine, SchedulerConfig(**config), clock=clock)
    try:
        yield scheduler
    finally:
        scheduler.close(timeout=WAIT_S)


def ask(rt: Runtime, prompt: str, **kwargs: Any) -> Result:
    """``rt.ask`` that fails after :data:`WAIT_S` instead of waiting for ever."""
    return rt.submit(prompt, **kwargs).result(timeout=WAIT_S)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.002)
