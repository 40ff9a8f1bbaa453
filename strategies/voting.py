"""Vote counting and the stopping rules of adaptive sampling.

- Majority vote with the tie rule of self-consistency as used here: among tied
  answers, the one whose first sample finished first (then shortest, then
  lowest index) wins.
- Adaptive-Consistency's Beta stopping rule (Aggarwal et al., EMNLP 2023,
  "Let's Sample Step by Step: Adaptive-Consistency for Efficient Reasoning and
  Coding with LLMs"): with a and b the counts of the two most common answers,
  stop when P(p1 > p2) >= threshold, where p1/(p1+p2) ~ Beta(a+1, b+1).
- The give-up rule (edgescale's): the probability that the Beta rule can still fire within the
  samples left, under a Polya urn (Chinese restaurant) predictive of the answers to come:
  each next answer repeats an answer seen so far with probability proportional to its count,
  or is another one with probability proportional to ``theta`` (1). Adaptive sampling stops
  when that probability falls below its ``give_up`` threshold (:func:`reach_probability`).
- ESC (Li et al., ICLR 2024, "Escape Sky-high Cost: Early-stopping
  Self-Consistency for Multi-step Reasoning"): stop when all answers in a
  window of w consecutive samples agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from math import comb, exp, lgamma
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


@lru_cache(maxsize=4096)
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


def _polya(draws: tuple[int, int, int], weights: tuple[float, float, float]) -> float:
    """P(draws) of a Dirichlet-multinomial (Polya urn) with these starting weights."""
    n, total = sum(draws), sum(weights)
    log_p = lgamma(n + 1) + lgamma(total) - lgamma(n + total)
    for x, w in zip(draws, weights):
        if w > 0:
            log_p += lgamma(x + w) - lgamma(w) - lgamma(x + 1)
        elif x:
            return 0.0
    return exp(log_p)


def reach_probability(answers: Sequence[str | None], remaining: int, threshold: float, theta: float = 1.0) -> float:
    """The probability that the Beta rule fires once ``remaining`` more answers have come, exactly.

    The answers to come follow a Polya urn that starts from the answers seen so far: the
    leader (count a), the runner-up (b) and a third bin for every other answer and for answers
    not seen yet (the other counts plus ``theta``). The rule is tested on the final counts of
    the leader and the runner-up; the third bin's draws are taken to spread (they never form
    a new leader), which makes the estimate optimistic: giving up on it is conservative.
    """
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    if not counts:
        return 1.0
    a, b = counts[0], counts[1] if len(counts) > 1 else 0
    weights = (float(a), float(b), float(sum(counts[2:])) + theta)
    if remaining <= 0:
        return 1.0 if beta_confidence(a, b) >= threshold else 0.0
    total = 0.0
    for x1 in range(remaining + 1):
        for x2 in range(remaining + 1 - x1):
            hi, lo = max(a + x1, b + x2), min(a + x1, b + x2)
            if beta_confidence(hi, lo) >= threshold:
                total += _polya((x1, x2, remaining - x1 - x2), weights)
    return min(1.0, total)


def esc_rule(answers_in_order: Sequence[str | None], window: int) -> bool:
    """ESC's stop test: the latest complete window of ``window`` answers is unanimous."""
    n = len(answers_in_order) // window * window
    if n == 0:
        return False
    last = answers_in_order[n - window : n]
    return last[0] is not None and all(a == last[0] for a in last)
