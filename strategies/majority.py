"""single and majority@k (self-consistency).

Wang et al., ICLR 2023, "Self-Consistency Improves Chain of Thought Reasoning
in Language Models": sample k reasoning paths at temperature > 0, extract each
final answer, return the most common. Here all k share one prefilled prompt
and decode in one batch; ties go to the answer whose first sample finished
first (then the shorter, then the lower index).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgescale.answers.structured import field_vote
from edgescale.runtime.generate import BatchGenerator
from edgescale.strategies.base import AnswerBook, Decision, OneBatch, vote
from edgescale.strategies.confidence import weighted_vote
from edgescale.strategies.spec import Confidence


def field_decision(gen: BatchGenerator, book: AnswerBook, finished: list[int]) -> Decision:
    """Per-field vote over the samples' JSON answers (answers that are not JSON objects do
    not vote). The winner is a sample whose answer is the assembled object, else the first
    that answered; the votes are ``field=value`` counts."""
    answered = [(i, a) for i in finished if (a := book.value(gen.states[i])) is not None]
    answer, per_field = field_vote([a for _, a in answered])
    votes = {f"{key}={value}": n for key, counts in per_field.items() for value, n in counts.items()}
    same = [i for i, a in answered if a == answer]
    winner = same[0] if same else (answered[0][0] if answered else (0 if gen.states else None))
    return Decision(answer, winner, votes)


@dataclass
class MajorityController(OneBatch):
    """k samples run to their end; majority vote (``confidence``: DeepConf's weighted vote).
    k=1 is ``single``."""

    confidence: Confidence | None = None
    fields: bool = False  # JSON answers: each top-level field takes its own majority

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        finished = [s.index for s in gen.states if s.finished]
        if self.fields:
            return field_decision(gen, book, finished)
        if self.confidence is not None:
            out = weighted_vote(gen, book, finished, keep=self.confidence.keep, window=self.confidence.window)
        else:
            out = vote(gen, book, finished)  # type: ignore[assignment]
        winner = out.winner
        if winner is None and gen.states:
            winner = 0  # nothing extractable: show the first sample's text
        return Decision(out.answer, winner, out.votes)
