"""Small statistics for benchmark tables: Wilson intervals, percentiles, paired
differences and the Pareto frontier of (cost, accuracy) points. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes/n``.
    Unlike the normal interval it stays inside [0, 1] and is not degenerate at
    0 or n successes. ``n == 0`` gives the uninformative [0, 1].
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding can miss them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics
    (numpy's default ``method="linear"``). NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class PairedDiff:
    """Mean of per-question differences a_i - b_i with a normal 95% interval (clipped to [-1, 1]:
    the inputs are 0/1 scores)."""

    diff: float
    low: float
    high: float
    n: int


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> PairedDiff:
    """Difference of two strategies' accuracy on the *same* questions.

    Pairing removes the between-question variance that dominates two
    independent intervals, so this is the interval to read when asking
    "is strategy A as accurate as B here".
    """
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    n = len(a)
    if n == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0)
    diffs = [x - y for x, y in zip(a, b)]
    d = mean(diffs)
    if n == 1:
        return PairedDiff(d, math.nan, math.nan, 1)
    var = math.fsum((x - d) ** 2 for x in diffs) / (n - 1)
    half = z * math.sqrt(var / n)
    return PairedDiff(d, max(-1.0, d - half), min(1.0, d + half), n)  # differences of 0/1 scores


@dataclass(frozen=True)
class Point:
    label: str
    cost: float
    accuracy: float


def pareto_frontier(points: Sequence[Point]) -> tuple[Point, ...]:
    """Points no other point beats: none has lower-or-equal cost *and* higher-or-equal
    accuracy with one of the two strictly better. Ordered by increasing cost.

    Of exact duplicates (same cost and accuracy) only the first given is kept.
    Points with a NaN coordinate are never on the frontier.
    """
    usable = [
        (i, p) for i, p in enumerate(points) if not (math.isnan(p.cost) or math.isnan(p.accuracy))
    ]
    usable.sort(key=lambda ip: (ip[1].cost, -ip[1].accuracy, ip[0]))
    frontier: list[Point] = []
    best = -math.inf
    for _, p in usable:
        if p.accuracy > best:
            frontier.append(p)
            best = p.accuracy
    return tuple(frontier)
