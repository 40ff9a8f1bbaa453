"""Vote counting and the stopping rules of adaptive sampling.

- Majority vote with the tie rule of self-consistency as used here: among tied
  answers, the one whose first sample finished first (then shortest, then
  lowest index) wins.
- Adaptive-Consistency's Beta stopping rule (Aggarwal et al., EMNLP 2023,
  "Let's Sample Step by Step: Adaptive-Consistency for Efficient Reasoning and
  Coding with LLMs"): with a and b the counts of the two most common answers,
  stop when P(p1 > p2) >= threshold, where p1/(p1+p2) ~ Beta(a+1, b+1).
- ESC (Li et al., ICLR 2024, "Escape Sky-high Cost: Early-stopping
  Self-Consistency for Multi-step Reasoning"): stop when all answers in a
  window of w consecutive samples agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import Callable, Hashable, Sequence


@dataclass(frozen=True)
class VoteOutcome:
    answer: str | None
    winner: int | None  # index of the sample that represents the winning answer
    votes: dict[str, int]


def majority(
    ballots: Sequence[tuple[int, str | None]], order: Callable[[int], Hashable]
) -> VoteOutcome:
    """Most common non-None answer. ``ballots`` are (sample index, answer) pairs;
    ``order(index)`` ranks samples for tie-breaking (smaller = finished earlier)."""
    votes = Counter(a for _, a in ballots if a is not None)
    if not votes:
        return VoteOutcome(None, None, {})
    top = max(votes.values())
    first_of: dict[str, int] = {}
    for idx, ans in ballots:
        if ans is not None and votes[ans] == top:
            if ans not in first_of or order(idx) < order(first_of[ans]):  # type: ignore[operator]
                first_of[ans] = idx
    answer = min(first_of, key=lambda a: order(first_of[a]))  # type: ignore[arg-type,return-value]
    return VoteOutcome(answer, first_of[answer], dict(votes.most_common()))


def beta_confidence(a: int, b: int) -> float:
    """P(X > 1/2) for X ~ Beta(a + 1, b + 1), exactly (integer parameters).

    With n = a + b + 1, 1 - I_{1/2}(a + 1, b + 1) = sum_{j=0}^{a} C(n, j) / 2^n.
    """
    if a < 0 or b < 0:
        raise ValueError("counts must be non-negative")
    n = a + b + 1
    return sum(comb(n, j) for j in range(a + 1)) / 2**n


def top_two(answers: Sequence[str | None]) -> tuple[int, int]:
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    return (counts[0] if counts else 0, counts[1] if len(counts) > 1 else 0)


def beta_rule(answers: Sequence[str | None], threshold: float) -> bool:
    """Adaptive-Consistency's stop test over the answers seen so far."""
    a, b = top_two(answers)
    return a > 0 and beta_confidence(a, b) >= threshold


def esc_rule(answers_in_order: Sequence[str | None], window: int) -> bool:
    """ESC's stop test: the latest complete window of ``window`` answers is unanimous."""
    n = len(answers_in_order) // window * window
    if n == 0:
        return False
    last = answers_in_order[n - window : n]
    return last[0] is not None and all(a == last[0] for a in last)
