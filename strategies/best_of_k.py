"""best@k by self-certainty.

Kang et al., 2025, "Scalable Best-of-N Selection for Large Language Models via
Self-Certainty": pick among k samples by the model's own confidence, no reward
model. The score here is the mean token log-probability over the answer span
(the tokens that spell the extracted answer); a sample without an extractable
answer scores its whole text's mean instead and ranks below any sample that
has an answer. Ties -> the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgescale.runtime.generate import BatchGenerator, SeqState
from edgescale.strategies.base import AnswerBook, Decision, OneBatch, mean_logprob, span_logprob


@dataclass
class BestOfKController(OneBatch):
    def score(self, st: SeqState, book: AnswerBook) -> tuple[int, float]:
        got = book.of(st)
        if got is not None:
            lp = span_logprob(st, got.span)
            if lp is not None:
                return (1, lp)
        whole = mean_logprob(st)
        return (0, whole if whole is not None else float("-inf"))

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        done = [s for s in gen.states if s.finished]
        if not done:
            return Decision(None, None, {})
        best = max(done, key=lambda s: (self.score(s, book), -s.index))
        value = book.value(best)
        votes: dict[str, int] = {}
        for s in done:
            v = book.value(s)
            if v is not None:
                votes[v] = votes.get(v, 0) + 1
        return Decision(value, best.index, votes)
