"""What controllers record as a query runs: its probes and how a staged strategy ended
(part of every :class:`~edgescale.strategies.result.Result`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeRecord:
    """One early-exit / forced-answer probe of a sample."""

    sample: int
    at_token: int
    text: str
    answer: str | None
    hedged: bool



@dataclass(frozen=True)
class Outcome:
    """How a staged strategy (auto) ended."""

    name: str  # confident | escalated | no-escalation | no-time-to-escalate
    stage1_certainty: float | None = None
