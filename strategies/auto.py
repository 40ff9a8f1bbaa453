"""`auto`: run the planner's escalation (see strategies/planner.py for the policy).

Both stages run in one batch over one prefilled prompt (no second prefill):

1. sample 0, greedy, with early-exit probes. If its answer is confident (the
   probes agreed, or the answer's tokens have a geometric-mean probability of
   at least ``plan.confidence``) the query ends there;
2. otherwise, when the plan allows an escalation and the time left fits a wave
   as long as sample 0 turned out to be (checked now, with the device
   profile's step times and the steps observed so far; the plan's first wave
   is halved until it fits, down to 2), the escalation runs on samples 1..k:
   adaptive sampling with sample 0's answer counted as a vote, or DeepConf
   (``conf@k``, offline or online) on samples 1..k with sample 0 voting too
   (weighted by its score, in the consensus check and the final vote), falling
   back to sample 0's answer when no sample has one, or when the escalation gives
   up (its own samples' answers spread: sampling shows no signal that the greedy
   answer lacks).

The deadline covers both stages; the result records the outcome
(``confident``, ``escalated``, ``no-escalation``, ``no-time-to-escalate``) and
stage 1's certainty. The planner turns ``auto`` into an
:class:`~edgescale.strategies.spec.Escalate`; ``runner.build_controller`` makes
this controller from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.strategies.adaptive import AdaptiveController
from edgescale.strategies.base import AnswerBook, Decision, answer_logprob
from edgescale.strategies.confidence import ConfidenceController
from edgescale.strategies.early_exit import EarlyExitController
from edgescale.strategies.records import Outcome, ProbeRecord
from edgescale.strategies.spec import Adaptive, Confidence, Escalation, first_wave, samples_of, with_first_wave

ESCALATION_LENGTH_MARGIN = 1.25  # a wave is expected to run this much longer than sample 0 did


def certainty_of(gen: BatchGenerator, book: AnswerBook, index: int) -> float | None:
    """Geometric-mean probability of the tokens of sample ``index``'s answer (self-certainty)."""
    lp = answer_logprob(gen.states[index], book)
    return None if lp is None else math.exp(lp)


@dataclass
class AutoController:
    """Stage 1 (one early-exit sample) then, if unsure and in time, the escalation in the same batch."""

    stage1: EarlyExitController
    escalation: Escalation | None
    confidence: float
    max_new_tokens: int
    step_time: Callable[[int], float] | None = None  # the device profile's seconds per step at k live
    stage2: AdaptiveController | ConfidenceController | None = None
    first: Decision | None = None
    state: str = "no-escalation"
    certainty: float | None = None
    gave_up: bool = False  # the escalation gave up: its samples' answers spread

    @property
    def n_seqs(self) -> int:
        return 1 + (samples_of(self.escalation) if self.escalation is not None else 0)

    @property
    def n_initial(self) -> int:
        return 1

    @property
    def probe_slots(self) -> int:
        return self.stage1.probe_slots

    @property
    def probe_cells(self) -> int:
        return self.stage1.probe_cells

    @property
    def records(self) -> list[ProbeRecord]:
        return self.stage1.records

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.state, self.certainty)

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        if self.stage2 is not None:
            rule = self.stage2.on_step(gen, events, book)
            self.gave_up = rule == "gave-up"
            return rule
        rule = self.stage1.on_step(gen, events, book)
        if rule is None:
            return None
        first = self.first = self.stage1.decide(gen, book)
        self.certainty = certainty_of(gen, book, 0)
        if first.answer is not None and (
            rule == "probes-agreed" or (self.certainty is not None and self.certainty >= self.confidence)
        ):
            self.state = "confident"
            return rule
        esc = self.escalation
        if esc is None:
            return rule
        wave = self._wave_that_fits(gen)
        if wave < 2:
            self.state = "no-time-to-escalate"
            return rule
        self.state = "escalated"
        esc = with_first_wave(esc, wave)
        if isinstance(esc, Adaptive):
            self.stage2 = AdaptiveController(
                k_max=esc.max, threshold=esc.conf, wave=esc.wave, rule=esc.rule, window=esc.window,
                prior=(first.answer,) if first.answer is not None else (), refill=esc.refill, give_up=esc.give_up,
            )
        else:
            self.stage2 = ConfidenceController(esc, prior=(0,) if first.answer is not None else ())
        gen.activate(gen.pending()[: self.stage2.n_initial])
        return None

    def _wave_that_fits(self, gen: BatchGenerator) -> int:
        """The widest first wave (the plan's width, halved until it fits, at least 2; offline
        DeepConf's k or nothing) whose samples, as long as sample 0 was plus a margin, finish in
        the time left; 0 if none does."""
        esc = self.escalation
        if esc is None:
            return 0
        width = first_wave(esc)
        left = gen.deadline.left(gen.clock()) if gen.deadline is not None else None
        if left is None:
            return width
        st = gen.states[0]
        steps = self.max_new_tokens
        if st.finish_reason in ("stop", "early-exit"):
            steps = min(steps, math.ceil(ESCALATION_LENGTH_MARGIN * (len(st.tokens) + 1)))
        observed = (gen.now() - gen.stats.prefill_s) / max(1, gen.stats.decode_steps)  # k=1, probes included
        wave = width
        while wave >= 2:
            if self.step_time is not None:
                per_step = max(self.step_time(wave), observed * self.step_time(wave) / self.step_time(1))
            else:
                per_step = observed * wave  # no profile: assume batching buys nothing (a CPU)
            if steps * per_step <= left:
                return wave
            if isinstance(esc, Confidence) and not esc.online:
                return 0  # offline DeepConf starts all its samples at once: no narrower wave
            wave //= 2
        return 0

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        if self.stage2 is None:
            return self.stage1.decide(gen, book)
        out = self.stage2.decide(gen, book)
        first = self.first
        if first is not None and first.answer is not None and (out.answer is None or self.gave_up):
            # no escalated sample has an answer, or their answers spread (the escalation gave up):
            # stage 1's greedy answer stands
            return Decision(first.answer, first.winner, out.votes) if self.gave_up else first
        if out.winner is None and first is not None and out.answer is not None and out.answer == first.answer:
            return Decision(out.answer, first.winner, out.votes)  # sample 0's answer won the vote
        return out
