"""A plan's strategy as the controller that runs it, and the sequences and KV room it
allocates (the planner counts a query's cells from the same numbers the runner uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgescale.strategies.adaptive import AdaptiveController
from edgescale.strategies.auto import AutoController
from edgescale.strategies.base import Controller
from edgescale.strategies.best_of_k import BestOfKController
from edgescale.strategies.confidence import ConfidenceController
from edgescale.strategies.early_exit import EarlyExitController
from edgescale.strategies.first_finish import ShortMController
from edgescale.strategies.majority import MajorityController
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    Confidence,
    EarlyExit,
    Escalate,
    FirstFinish,
    Majority,
    ShortM,
    Single,
    Strategy,
    confidence_of,
)

FORCED_PROBE_TOKENS = 8  # a forced-answer probe at the deadline: enough for a number or a letter and the brace


def build_controller(
    strategy: Strategy, cue: list[int], *, prior: tuple[str, ...] = (), max_new_tokens: int = 0,
    step_time: Callable[[int], float] | None = None,
) -> Controller:
    if isinstance(strategy, Single):
        return MajorityController(k=1)
    conf = confidence_of(strategy)
    if isinstance(strategy, Majority):
        return MajorityController(k=strategy.k, confidence=conf, fields=strategy.vote == "fields")
    if isinstance(strategy, Confidence):
        return ConfidenceController(strategy)
    if isinstance(strategy, FirstFinish):
        return ShortMController(m=1, k=strategy.k, answered=strategy.rule == "answered")
    if isinstance(strategy, ShortM):
        return ShortMController(m=strategy.m, k=strategy.k, answered=strategy.rule == "answered")
    if isinstance(strategy, BestOfK):
        return BestOfKController(k=strategy.k)
    if isinstance(strategy, Adaptive):
        return AdaptiveController(
            k_max=strategy.max, threshold=strategy.conf, wave=strategy.wave, rule=strategy.rule,
            window=strategy.window, prior=prior, confidence=conf, refill=strategy.refill, give_up=strategy.give_up,
        )
    if isinstance(strategy, EarlyExit):
        return EarlyExitController(
            cue=cue, every=strategy.every, window=strategy.window, k=strategy.k, probe_tokens=strategy.probe
        )
    if isinstance(strategy, Escalate):
        s1 = strategy.stage1
        return AutoController(
            stage1=EarlyExitController(cue=cue, every=s1.every, window=s1.window, k=1, probe_tokens=s1.probe),
            escalation=strategy.escalation, confidence=strategy.confidence, max_new_tokens=max_new_tokens,
            step_time=step_time,
        )
    if isinstance(strategy, Auto):
        raise TypeError("auto must be resolved to a concrete strategy by the planner first")
    raise TypeError(f"unknown strategy {strategy!r}")


@dataclass(frozen=True)
class Allocation:
    """The sequence ids and KV room one query takes."""

    n_seqs: int  # samples (every stage's)
    probe_slots: int  # probes at once (each a forked copy of a sample, or with streams in its own row)
    probe_cells: int  # cells one probe adds


def allocation(controller: Controller, *, cue_tokens: int, deadline: bool) -> Allocation:
    """What ``controller`` allocates; a query with a deadline also keeps room for one
    forced-answer probe (the answer cue and FORCED_PROBE_TOKENS)."""
    slots, cells = controller.probe_slots, controller.probe_cells
    if deadline:
        slots, cells = max(slots, 1), max(cells, cue_tokens + FORCED_PROBE_TOKENS)
    return Allocation(controller.n_seqs, slots, cells)


def plan_allocation(strategy: Strategy, *, cue_tokens: int, deadline: bool) -> Allocation:
    """:func:`allocation` of the controller a planned strategy runs as (the planner's side:
    an answer cue of ``cue_tokens`` tokens, as the runner's engine tokenizes it)."""
    return allocation(build_controller(strategy, [0] * cue_tokens), cue_tokens=cue_tokens, deadline=deadline)
