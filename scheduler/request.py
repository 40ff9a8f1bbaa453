"""A submitted query (:class:`Request`) and how it is planned when it reaches the head of
the queue (:func:`plan_request`): from the load of that moment, with the planner's pure
``plan()``. Everything a plan is made from travels on the request as values, made once
by ``Runtime.request`` (the deadline, the policy, the device profile): the scheduler
never calls back into the front end. A query planned beforehand (:func:`planned_request`:
the strategy-rule tests' exact plans) enters the same queue and is admitted as it is."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

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
    exact_samples: bool = False  # OpenAI's n: the samples are the answer, so none may be cut (else 400)
    model_name: str = ""
    on_step: StepCallback | None = None
    future: Future[Result] = field(default_factory=Future)
    cancelled: bool = False
    planned: Query | None = None  # planned beforehand: admitted as it is (plan_request does not plan it)

    def cancel(self) -> None:
        """The client went away: the query ends at the next step boundary, its KV freed."""
        self.cancelled = True

    @property
    def arrival(self) -> float:
        return self.deadline.arrival


def request_inputs(request: Request, *, others: int, now: float) -> tuple[QueryShape, Timing | None, Budget]:
    """What the planner plans a request from at ``now``: its shape, the device profile as
    it sees it beside ``others`` live sequences, and its budget (the deadline's time left)."""
    left = request.deadline.left(now)
    budget = Budget(deadline_s=None if left is None else max(1e-3, left), memory_bytes=request.memory_bytes)
    shape = QueryShape(prompt_tokens=len(request.prompt_tokens), max_new_tokens=request.options.max_tokens,
                       strategy=request.strategy, context_cells=request.context_cells,
                       cue_tokens=request.cue_tokens, exact_samples=request.exact_samples)
    timing = SharedTiming(request.timing, others) if request.timing is not None else None
    return shape, timing, budget


def plan_request(request: Request, memory: MemoryModel, *, others: int, now: float) -> Query:
    """Plan a request that will share each step with ``others`` live sequences, at ``now``:
    its deadline gives the time left (what waiting in the queue has not spent). A request
    planned beforehand keeps its plan."""
    if request.planned is not None:
        return request.planned
    shape, timing, budget = request_inputs(request, others=others, now=now)
    chosen = plan(shape, timing, memory, budget, request.policy)
    step_time = request.timing.step_time if request.timing is not None and chosen.predicted_s is not None else None
    return Query(
        prompt_tokens=request.prompt_tokens, plan=chosen,
        config=generation_config(chosen.strategy, request.options, chosen.max_new_tokens),
        answer_kind=request.answer_kind, choices=request.choices, deadline=request.deadline,
        model_name=request.model_name, step_time=step_time,
    )


def planned_request(query: Query, *, on_step: StepCallback | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> Request:
    """A query planned beforehand, as the scheduler takes it: admitted with its own plan and
    generation settings. Its deadline counts from its arrival; a query without one arrives
    now (``clock``) with no deadline."""
    deadline = query.deadline if query.deadline is not None else Deadline.after(None, clock=clock)
    return Request(
        prompt_tokens=query.prompt_tokens, strategy=query.strategy,
        options=GenerationOptions(max_tokens=query.config.max_new_tokens, seed=query.config.seed,
                                  stop=query.config.stop),
        deadline=deadline, answer_kind=query.answer_kind, choices=query.choices, model_name=query.model_name,
        on_step=on_step, planned=replace(query, deadline=deadline),
    )
