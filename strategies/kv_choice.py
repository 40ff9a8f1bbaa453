"""``--kv-type auto``: which element types the shared KV cache gets for a query under a
memory budget (the planner's :func:`~edgescale.strategies.planner.plan`, tried per type)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgescale.errors import BudgetInfeasible
from edgescale.runtime.kv_types import F16, KvType
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.planner import Budget, Plan, QueryShape, Timing, plan
from edgescale.strategies.policy import AutoPolicy
from edgescale.strategies.spec import samples_of


@dataclass(frozen=True)
class KvChoice:
    """The shared cache's element types, and why."""

    kv_type: KvType
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"kv_type": self.kv_type.name, "why": self.reason}


def _samples(p: Plan) -> int:
    """Samples a plan may draw (auto: stage 1's and its escalation's)."""
    esc = p.escalate_to
    return samples_of(p.strategy) + (samples_of(esc) if esc is not None else 0)


def _covers(p: Plan, want: Plan) -> bool:
    return _samples(p) >= _samples(want) and p.max_new_tokens >= want.max_new_tokens


def _what(p: Plan | None) -> str:
    return "nothing" if p is None else f"{_samples(p)} sample(s) of {p.max_new_tokens} tokens"


def kv_type_for(shape: QueryShape, profile: Timing | None, memories: Callable[[KvType], MemoryModel],
                budget: Budget, policy: AutoPolicy | None, candidates: Sequence[tuple[KvType, str | None]]) -> KvChoice:
    """``--kv-type auto``: the cache type for a query of ``shape`` under ``budget``. The plan
    the planner would choose at f16 without the memory limit is the target; the first type
    (f16, then the ``candidates`` in order: fewest lost bits first) whose plan within the
    budget is as large (samples, tokens) is chosen. A candidate carries its refusal (not
    measured here, or its measured cost is over the bound): it is never chosen. When no
    type reaches the target, the one whose plan draws the most samples (f16 on a tie).
    No memory budget: f16."""
    if budget.memory_bytes is None:
        return KvChoice(F16, "no memory budget: f16, lossless")
    want = plan(shape, profile, memories(F16), Budget(deadline_s=budget.deadline_s), policy)

    def attempt(kv: KvType) -> Plan | None:
        try:
            return plan(shape, profile, memories(kv), budget, policy)
        except BudgetInfeasible:
            return None

    at_f16 = attempt(F16)
    if at_f16 is not None and _covers(at_f16, want):
        return KvChoice(F16, f"f16 fits the plan ({_what(want)}) in the budget")
    refused = [f"{kv.name} not chosen: {why}" for kv, why in candidates if why is not None]
    best, best_plan = F16, at_f16
    for kv, why in candidates:
        if why is not None:
            continue
        p = attempt(kv)
        if p is not None and _covers(p, want):
            return KvChoice(kv, "; ".join([f"f16 fits {_what(at_f16)} in the budget; {kv.name} fits the plan "
                                           f"({_what(want)}) within the measured cost bound", *refused]))
        if p is not None and (best_plan is None or _samples(p) > _samples(best_plan)):
            best, best_plan = kv, p
    head = (f"no allowed type fits the plan ({_what(want)}); {best.name} fits the most ({_what(best_plan)})"
            if best_plan is not None else "no type fits the budget")
    return KvChoice(best, "; ".join([head, *refused]))
