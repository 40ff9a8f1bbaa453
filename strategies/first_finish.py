"""First Finish Search (FFS@k) and short-m@k.

- FFS: Agarwal et al., 2025, "First Finish Search: Efficient Test-Time Scaling
  in Large Language Models": launch k samples, return the first one that
  finishes, cancel the rest at once.
- short-m@k: Hassid et al., 2025, "Don't Overthink it. Preferring Shorter
  Thinking Chains for Improved LLM Reasoning": launch k samples, stop all when
  the first m have finished, majority-vote among those m (ties -> the shortest).
  short-1@k is FFS.

Same-step ties are broken by the shorter sample, then the lower index; exactly
the first m finishers vote, even when more finish in the same step.

Who is a finisher. The papers' rule (``rule=any``): every sample that stops. The
default (``rule=answered``): a sample that stops without an answer the query's
answer kind can extract is *skipped* (it runs no further, and the result lists it
in ``skipped``); the rest go on until m samples with answers have finished. On
small instruct models the first sample to stop is often a bare guess or has no
answer at all, which the papers' reasoning models do not produce (the strategy
issue's measurements: ffs@8 25% vs maj@8 95% on one-digit sums). When every
sample ends with fewer than m answered finishers, those vote (none: the first
skipped sample is returned, without an answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.strategies.base import AnswerBook, Decision, OneBatch, cancel_live, finished_naturally, vote


@dataclass
class ShortMController(OneBatch):
    m: int = 1
    answered: bool = True  # only samples with an extractable answer finish (False: the papers' rule)
    finishers: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        for i in finished_naturally(gen, events):
            if len(self.finishers) >= self.m:
                continue
            if self.answered and book.value(gen.states[i]) is None:
                self.skipped.append(i)
            else:
                self.finishers.append(i)
        if len(self.finishers) >= self.m:
            cancel_live(gen)
            return "first-finished" if self.m == 1 else f"first-{self.m}-finished"
        return "all-finished" if not gen.live else None

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        skipped = tuple(self.skipped)
        if self.m == 1 and self.finishers:
            w = gen.states[self.finishers[0]]
            value = book.value(w)
            return Decision(value, w.index, {value: 1} if value is not None else {}, skipped)
        out = vote(gen, book, self.finishers)
        fallback = self.finishers or self.skipped
        winner = out.winner if out.winner is not None else (fallback[0] if fallback else None)
        return Decision(out.answer, winner, out.votes, skipped)
