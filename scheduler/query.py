"""One query as the scheduler runs it: a prompt, its plan and what the runner needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgescale.deadline import Deadline
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.strategies.planner import Plan
from edgescale.strategies.spec import Strategy

StepCallback = Callable[[BatchGenerator, Sequence[TokenEvent]], None]


@dataclass(frozen=True)
class Query:
    """One prompt and its plan, ready to run."""

    prompt_tokens: Sequence[int]
    plan: Plan
    config: GenerationConfig
    answer_kind: str = "auto"
    choices: tuple[str, ...] = ()
    deadline: Deadline | None = None  # None: no deadline, counted from when the run starts
    model_name: str = ""
    prior: tuple[str, ...] = ()  # answers already in hand, counted as votes (adaptive)
    step_time: Callable[[int], float] | None = None  # seconds per step at k live (device profile)

    @property
    def strategy(self) -> Strategy:
        return self.plan.strategy
