"""A submitted query (:class:`Request`) and how it is planned when it reaches the head of
the queue (:func:`plan_request`): from the load of that moment, with the planner's pure
``plan()``. Everything a plan is made from travels on the request as values, made once
by ``Runtime.request`` (the deadline, the policy, the device profile): the scheduler
never calls back into the front end."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from edgescale.deadline import Deadline
from edgescale.runtime.memory import MemoryModel
from edgescale.scheduler.query import Query, StepCallback
from edgescale.strategies.generation import GenerationOptions, generation_config
from edgescale.strategies.planner import CUE_TOKENS, Budget, QueryShape, SharedTiming, Timing, plan
from edgescale.strategies.policy import AutoPolicy
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Strategy


@dataclass
class Request:
    """A query as submitted: what its plan is made from, its deadline (which also holds
    when it arrived), and its future."""

    prompt_tokens: Sequence[int]
    strategy: Strategy  # as asked (``auto`` is made concrete by the planner)
    options: GenerationOptions
    deadline: Deadline
    memory_bytes: int | None = None  # the query's own memory budget
    answer_kind: str = "auto"
    choices: tuple[str, ...] = ()
    policy: AutoPolicy | None = None  # auto's policy (None: the default)
    timing: Timing | None = None  # the device profile, when the plan needs times (auto, a deadline)
    cue_tokens: int = CUE_TOKENS  # the probes' answer cue, as the engine tokenizes it
    context_cells: int | None = None  # the model's context
    model_name: str = ""
    on_step: StepCallback | None = None
    future: Future[Result] = field(default_factory=Future)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client went away: the query ends at the next step boundary, its KV freed."""
        self.cancelled = True

    @property
    def arrival(self) -> float:
        return self.deadline.arrival


def plan_request(request: Request, memory: MemoryModel, *, others: int, now: float) -> Query:
    """Plan a request that will share each step with ``others`` live sequences, at ``now``:
    its deadline gives the time left (what waiting in the queue has not spent)."""
    left = request.deadline.left(now)
    budget = Budget(deadline_s=None if left is None else max(1e-3, left), memory_bytes=request.memory_bytes)
    shape = QueryShape(prompt_tokens=len(request.prompt_tokens), max_new_tokens=request.options.max_tokens,
                       strategy=request.strategy, context_cells=request.context_cells,
                       cue_tokens=request.cue_tokens)
    timing = SharedTiming(request.timing, others) if request.timing is not None else None
    chosen = plan(shape, timing, memory, budget, request.policy)
    step_time = request.timing.step_time if request.timing is not None and chosen.predicted_s is not None else None
    return Query(
        prompt_tokens=request.prompt_tokens, plan=chosen,
        config=generation_config(chosen.strategy, request.options, chosen.max_new_tokens),
        answer_kind=request.answer_kind, choices=request.choices, deadline=request.deadline,
        model_name=request.model_name, step_time=step_time,
    )
