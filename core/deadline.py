"""A query's deadline: one value, made once where the query enters, carried whole.

``Deadline(arrival, due)`` holds two readings of the runtime's clock
(``time.perf_counter`` unless a test injects another): when the query arrived and
when its answer is due (``inf``: no deadline). The front ends parse what the user
typed (``--deadline 2s``, ``deadline_ms``, ``Budget(deadline_s=...)``) into
seconds; ``Runtime.request`` turns those into this value once; the scheduler, the
planner (time left at admission), the query runner and the step loop read it.
Nothing else stores the deadline in seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Deadline:
    arrival: float  # clock reading when the query arrived
    due: float = math.inf  # clock reading by which it must be answered (inf: no deadline)

    @classmethod
    def after(cls, seconds: float | None, arrival: float | None = None,
              clock: Callable[[], float] = time.perf_counter) -> "Deadline":
        """Due ``seconds`` after ``arrival`` (default: now); ``seconds`` None: no deadline."""
        start = clock() if arrival is None else arrival
        return cls(start, math.inf if seconds is None else start + seconds)

    @property
    def bounded(self) -> bool:
        """Whether there is a deadline at all."""
        return self.due != math.inf

    @property
    def seconds(self) -> float | None:
        """The whole allowance from arrival (None: no deadline)."""
        return self.due - self.arrival if self.bounded else None

    def left(self, now: float) -> float | None:
        """Seconds left at ``now`` (None: no deadline; never below zero)."""
        return max(0.0, self.due - now) if self.bounded else None

    def passed(self, now: float) -> bool:
        return now >= self.due
