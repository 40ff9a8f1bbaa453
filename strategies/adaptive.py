"""Adaptive sampling: Adaptive-Consistency's Beta rule and ESC's window rule.

- Aggarwal et al., EMNLP 2023, "Let's Sample Step by Step: Adaptive-Consistency
  for Efficient Reasoning and Coding with LLMs": after each new sample, with a
  and b the counts of the two most common answers, stop when
  P(p1 > p2) under Beta(a+1, b+1) >= threshold (``conf``, 0.8 by default), or at k_max.
- Li et al., ICLR 2024, "Escape Sky-high Cost: Early-stopping Self-Consistency
  for Multi-step Reasoning" (ESC): stop when all answers of a window of w
  samples agree.

Batched: ``wave`` samples decode together; each time one finishes the rule is
checked on all finished samples, and if it does not fire another sample is
started in its place until k_max have been started. When the rule fires the live
samples are cancelled at once. Samples whose answer cannot be extracted do not vote.

Giving up (``give_up``, the Beta rule only): after each finished sample that does not fire
the rule, with at least four answers counted (auto's prior one included), adaptive stops
when the probability that the rule fires within the samples left (``k_max`` minus the
finished ones) falls below ``give_up`` (0.5 by default; 0 never gives up). The probability
is exact under a Polya urn predictive of the answers to come (``voting.reach_probability``):
where answers spread, new answers keep coming and the rule grows unlikely. The query then
ends with the current vote (``stop_reason: gave-up``): the best-supported answer, not
``k_max`` samples.

Refill (``refill``): ``eager`` starts a replacement as soon as a sample finishes;
``lazy`` starts one only when the rule could not fire even if every live sample
ended up voting for the leading answer, since otherwise the replacement may well be
cancelled half-decoded (tokens spent for nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.strategies.base import (
    AnswerBook,
    Decision,
    Unstaged,
    cancel_live,
    finish_order,
    finished_naturally,
    vote,
)
from edgescale.strategies.confidence import weighted_vote
from edgescale.strategies.spec import Confidence
from edgescale.strategies.voting import beta_rule, esc_rule, majority, reach_probability

GIVE_UP_AFTER = 4  # answers counted before the give-up rule may stop a query


@dataclass
class AdaptiveController(Unstaged):
    k_max: int = 16
    threshold: float = 0.95
    wave: int = 4
    rule: str = "beta"  # or "esc"
    window: int = 4
    prior: tuple[str, ...] = ()  # answers from before this run (auto's first stage), counted as votes
    confidence: Confidence | None = None  # the final decision by DeepConf's weighted vote (no prior)
    refill: str = "eager"  # or "lazy" (see the module notes)
    give_up: float = 0.0  # stop below this chance of the Beta rule firing (see the module notes)
    probe_slots: int = 0
    probe_cells: int = 0
    order: list[int] = field(default_factory=list)  # finished samples, in finish order

    @property
    def n_seqs(self) -> int:
        return self.k_max

    @property
    def n_initial(self) -> int:
        return min(self.wave, self.k_max)


    def _fires(self, answers: list[str | None]) -> bool:
        if self.rule == "esc":
            return esc_rule(answers, self.window)
        return beta_rule(answers, self.threshold)

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        for i in finished_naturally(gen, events):
            self.order.append(i)
            answers = [*self.prior, *(book.value(gen.states[j]) for j in self.order)]
            if self._fires(answers):
                cancel_live(gen)
                return f"{self.rule}-confident"
            if self._gives_up(answers):
                cancel_live(gen)
                return "gave-up"
        free = self.wave - len(gen.live)
        pending = gen.pending()
        if free > 0 and pending and not (self.refill == "lazy" and self._live_may_decide(gen, book)):
            gen.activate(pending[:free])
        if not gen.live:
            return "k-max-reached"
        return None

    def _gives_up(self, answers: list[str | None]) -> bool:
        if self.rule != "beta" or self.give_up <= 0 or sum(a is not None for a in answers) < GIVE_UP_AFTER:
            return False
        left = self.k_max - (len(answers) - len(self.prior))
        return left > 0 and reach_probability(answers, left, self.threshold) < self.give_up

    def _live_may_decide(self, gen: BatchGenerator, book: AnswerBook) -> bool:
        """Whether the rule would fire if every live sample voted for the leading answer."""
        if not gen.live:
            return False
        answers = [*self.prior, *(book.value(gen.states[j]) for j in self.order)]
        counted = [a for a in answers if a is not None]
        leader = max(set(counted), key=counted.count) if counted else "\0leader"
        return self._fires([*answers, *([leader] * len(gen.live))])

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        if not self.prior and self.confidence is not None:
            weighted = weighted_vote(gen, book, self.order, keep=self.confidence.keep, window=self.confidence.window)
            winner = weighted.winner if weighted.winner is not None else (self.order[0] if self.order else None)
            return Decision(weighted.answer, winner, weighted.votes)
        if not self.prior:
            out = vote(gen, book, self.order)
            winner = out.winner if out.winner is not None else (self.order[0] if self.order else None)
            return Decision(out.answer, winner, out.votes)
        # prior answers vote too; they came first, so they rank first in ties (winner None)
        ballots: list[tuple[int, str | None]] = [(-1 - j, a) for j, a in enumerate(self.prior)]
        ballots += [(i, book.value(gen.states[i])) for i in self.order]
        out = majority(ballots, lambda i: (-1, 0, i) if i < 0 else finish_order(gen.states[i]))
        winner = out.winner if out.winner is not None and out.winner >= 0 else None
        if winner is None and out.answer is not None:
            winner = next((i for i in self.order if book.value(gen.states[i]) == out.answer), None)
        return Decision(out.answer, winner, out.votes)
