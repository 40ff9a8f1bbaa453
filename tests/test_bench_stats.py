"""Benchmark statistics: Wilson intervals, percentiles, paired differences, Pareto frontier."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest

from edgescale.evals.stats import Point, paired_difference, pareto_frontier, percentile, wilson


def test_wilson_matches_a_hand_computation() -> None:
    # 8 of 10, z = 1.959964: z^2 = 3.841459, denominator 1 + z^2/n = 1.3841459,
    # centre (0.8 + 0.1920729) / 1.3841459 = 0.7167402,
    # half 1.959964 * sqrt(0.016 + 0.0096036) / 1.3841459 = 0.2265777.
    ci = wilson(8, 10)
    assert ci.low == pytest.approx(0.7167402 - 0.2265777, abs=1e-6)
    assert ci.high == pytest.approx(0.7167402 + 0.2265777, abs=1e-6)
    assert (round(ci.low, 3), round(ci.high, 3)) == (0.490, 0.943)  # the textbook figure


def test_wilson_ends_are_exact() -> None:
    zero, full = wilson(0, 10), wilson(10, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-4)
    assert full.high == 1.0 and full.low == pytest.approx(0.7225, abs=1e-4)
    assert (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_agrees_with_scipy(kn: tuple[int, int]) -> None:
    k, n = kn
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    ci = wilson(k, n)
    assert ci.low == pytest.approx(ref.low, abs=1e-9)
    assert ci.high == pytest.approx(ref.high, abs=1e-9)
    assert ci.low <= k / n <= ci.high


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(4.8)  # rank 3.8 between 4 and 5
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_paired_difference() -> None:
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [1, 0, 1, 0, 0, 0, 1, 1]
    d = paired_difference(a, b)
    # per-question differences 0,1,0,0,1,0,0,0: mean 0.25, sample sd over n - 1 = 7
    diffs = [0, 1, 0, 0, 1, 0, 0, 0]
    sd = math.sqrt(sum((x - 0.25) ** 2 for x in diffs) / 7)
    assert d.diff == 0.25 and d.n == 8
    assert d.low == pytest.approx(0.25 - 1.959964 * sd / math.sqrt(8), abs=1e-6)
    assert d.high == pytest.approx(0.25 + 1.959964 * sd / math.sqrt(8), abs=1e-6)
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)


def test_pareto_frontier_on_synthetic_points() -> None:
    pts = [
        Point("single", 10, 0.30),
        Point("maj@8", 800, 0.42),
        Point("ffs@8", 200, 0.28),  # dominated by single (cheaper and better)
        Point("short-3@8", 300, 0.40),
        Point("adaptive", 500, 0.40),  # dominated by short-3@8 (same accuracy, cheaper)
        Point("baseline@8", 900, 0.42),  # dominated by maj@8 (same accuracy, dearer)
        Point("best@8", 1000, 0.45),
        Point("broken", math.nan, 0.99),
    ]
    frontier = pareto_frontier(pts)
    assert [p.label for p in frontier] == ["single", "short-3@8", "maj@8", "best@8"]
    costs = [p.cost for p in frontier]
    accs = [p.accuracy for p in frontier]
    assert costs == sorted(costs) and accs == sorted(accs)


@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_frontier_is_exactly_the_non_dominated_set(raw: list[tuple[float, float]]) -> None:
    pts = [Point(str(i), c, a) for i, (c, a) in enumerate(raw)]
    on = {p.label for p in pareto_frontier(pts)}

    def dominated(p: Point) -> bool:
        return any(q.cost <= p.cost and q.accuracy >= p.accuracy and (q.cost, q.accuracy) != (p.cost, p.accuracy)
                   for q in pts)

    for p in pts:
        if dominated(p):
            assert p.label not in on
    # every non-dominated (cost, accuracy) pair is represented exactly once
    wanted = {(p.cost, p.accuracy) for p in pts if not dominated(p)}
    got = [(p.cost, p.accuracy) for p in pts if p.label in on]
    assert sorted(got) == sorted(wanted)
