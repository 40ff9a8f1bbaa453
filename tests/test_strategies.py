"""Exact strategy rules on a scripted fake engine (strategy logic only), each query run the
way every query runs: submitted to a scheduler over the engine (alone in its loop)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import pytest
from scipy.special import betainc

from edgescale.deadline import Deadline
from edgescale.runtime.engine import DecodeSession
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.runtime.sampling import GREEDY
from edgescale.scheduler.request import planned_request
from edgescale.scheduler.runner import Query, StepCallback
from edgescale.strategies.planner import Plan
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Adaptive, EarlyExit, Escalate, Strategy, parse_strategy, samples_of
from edgescale.strategies.voting import beta_confidence, beta_rule, esc_rule, reach_probability
from tests.fake_engine import PROMPT_END, FakeEngine
from tests.scheduling import WAIT_S, StepClock, scheduler_on

QUESTION = [*b"Q?", PROMPT_END]  # as the fake's format_prompt makes it: read in the shared steps, it ends there


def plan_of(strategy: Strategy, max_new: int) -> Plan:
    """A plan without a budget: the strategy as written, nothing predicted."""
    return Plan(strategy=strategy, k=samples_of(strategy), max_new_tokens=max_new, n_cells=0, n_batch=0,
                predicted_s=None, predicted_peak_bytes=None, kv_bytes=0)


def run(engine: FakeEngine, query: Query, *, clock: Callable[[], float] | None = None,
        on_step: StepCallback | None = None) -> Result:
    """The query's result from a scheduler over ``engine`` whose loop reads ``clock`` (when
    given), the query admitted with its own plan."""
    clock = clock or time.perf_counter
    with scheduler_on(engine, clock) as scheduler:  # type: ignore[arg-type]
        return scheduler.submit(planned_request(query, on_step=on_step, clock=clock)).result(timeout=WAIT_S)


class LaneWatch:
    """An ``on_step`` callback that keeps the query's lanes: its views of the shared session."""

    def __init__(self) -> None:
        self.lanes: list[DecodeSession] = []

    def __call__(self, gen: BatchGenerator, events: Sequence[TokenEvent]) -> None:
        if not any(lane is gen.session for lane in self.lanes):
            self.lanes.append(gen.session)

    @property
    def ids(self) -> list[int]:
        """How many sequence ids each lane holds."""
        return [lane.n_seq_max for lane in self.lanes]


def due(seconds: float | None, clock) -> Deadline | None:
    """A query's deadline of ``seconds``, counted from now on ``clock``."""
    return Deadline.after(seconds, clock=clock or time.perf_counter) if seconds is not None else None


def ask(engine: FakeEngine, spec: str, *, kind: str = "number", max_new: int = 400, deadline=None, clock=None,
        on_step: StepCallback | None = None):
    q = Query(prompt_tokens=QUESTION, plan=plan_of(parse_strategy(spec), max_new), answer_kind=kind,
              config=GenerationConfig(max_new_tokens=max_new, sampling=GREEDY), deadline=due(deadline, clock))
    return run(engine, q, clock=clock, on_step=on_step)


def pad(answer: str, length: int) -> str:
    """A script of exactly ``length`` characters ending in 'The answer is <answer>.'"""
    tail = f" The answer is {answer}."
    return " " + "x" * (length - len(tail) - 1) + tail


# -- first finish -----------------------------------------------------------
def test_ffs_picks_first_finisher_and_cancels_rest_same_step() -> None:
    eng = FakeEngine([pad("1", 60), pad("2", 50), pad("3", 30), pad("4", 45)])
    watch = LaneWatch()
    res = ask(eng, "ffs@4", on_step=watch)
    assert res.answer == "3" and res.winner == 2
    assert res.stop_reason == "first-finished"
    by = {s.index: s for s in res.samples}
    assert by[2].finish_reason == "stop" and by[2].n_tokens == 30
    for i in (0, 1, 3):
        assert by[i].finish_reason == "cancelled"
        assert by[i].n_tokens == 31  # cancelled in the step the winner finished (its EOS step)
    # every KV freed: the query removed each sample's sequence itself (before its lane gave its ids back)
    assert {0, 1, 2, 3} <= set(eng.removed) and [lane.cells_used() for lane in watch.lanes] == [0]


def test_ffs_same_step_tie_goes_to_lower_index() -> None:
    eng = FakeEngine([pad("9", 40), pad("5", 30), pad("6", 30)])
    res = ask(eng, "ffs@3")
    assert res.winner == 1 and res.answer == "5"


def test_ffs_generates_fewer_tokens_than_majority() -> None:
    scripts = [pad(str(i), 30 + 10 * i) for i in range(6)]
    ffs = ask(FakeEngine(scripts), "ffs@6")
    maj = ask(FakeEngine(scripts), "maj@6")
    assert ffs.stats.generated_tokens < maj.stats.generated_tokens
    assert maj.stats.generated_tokens == sum(len(s) for s in scripts)


# -- short-m@k ----------------------------------------------------------------
def test_short_m_votes_over_exactly_the_first_m() -> None:
    # first three finishers say 5, 7, 7; the three slow ones would have outvoted with 5
    scripts = [pad("5", 30), pad("7", 31), pad("7", 32), pad("5", 50), pad("5", 51), pad("5", 52)]
    res = ask(FakeEngine(scripts), "short-3@6")
    assert res.answer == "7"
    assert res.votes == {"7": 2, "5": 1}
    assert res.stop_reason == "first-3-finished"
    cut = [s for s in res.samples if s.finish_reason == "cancelled"]
    assert [s.index for s in cut] == [3, 4, 5]


def test_short_m_same_step_extra_finishers_do_not_vote() -> None:
    # four finish in the same step; only the first two (lowest index) vote
    scripts = [pad("1", 30), pad("2", 30), pad("2", 30), pad("2", 30), pad("3", 80)]
    res = ask(FakeEngine(scripts), "short-2@5")
    assert sum(res.votes.values()) == 2
    assert res.votes == {"1": 1, "2": 1}
    assert res.answer == "1"  # tie -> the shortest / first finished


def test_short_m_tie_goes_to_shortest() -> None:
    scripts = [pad("4", 40), pad("8", 33), pad("1", 90)]
    res = ask(FakeEngine(scripts), "short-2@3")
    assert res.answer == "8" and res.winner == 1


# -- who finishes: answered (default) or any (the papers' rule) -------------------------------
def test_ffs_skips_a_finisher_without_an_answer_by_default() -> None:
    scripts = [pad("7", 60), " I am not sure.", pad("4", 45)]  # sample 1 stops first, with no number
    res = ask(FakeEngine(scripts), "ffs@3")
    assert res.answer == "4" and res.winner == 2 and res.skipped == (1,)
    assert res.stop_reason == "first-finished" and res.strategy == "ffs@3"
    by = {s.index: s for s in res.samples}
    assert by[1].finish_reason == "stop" and by[1].answer is None
    assert by[0].finish_reason == "cancelled"
    paper = ask(FakeEngine(scripts), "ffs@3:rule=any")
    assert paper.answer is None and paper.winner == 1 and paper.skipped == ()
    assert paper.strategy == "ffs@3:rule=any"


def test_short_m_counts_m_answered_finishers() -> None:
    scripts = [pad("5", 30), " no idea", pad("5", 40), " hmm.", pad("6", 50), pad("6", 90), pad("6", 95)]
    res = ask(FakeEngine(scripts), "short-3@7")
    assert res.votes == {"5": 2, "6": 1} and res.answer == "5" and res.skipped == (3, 1)  # finish order
    assert [s.index for s in res.samples if s.finish_reason == "cancelled"] == [5, 6]
    paper = ask(FakeEngine(scripts), "short-3@7:rule=any")
    assert paper.votes == {"5": 1} and paper.skipped == ()  # two of its three voters had no answer


def test_answered_rule_with_no_answer_anywhere_returns_the_first_finisher() -> None:
    res = ask(FakeEngine([" nothing here", " nor here at all"]), "short-2@2")
    assert res.answer is None and res.winner == 0 and res.skipped == (0, 1)
    assert res.stop_reason == "all-finished"


# -- majority ------------------------------------------------------------------
def test_majority_vote_and_tie_rule() -> None:
    res = ask(FakeEngine([pad("3", 50), pad("4", 40), pad("3", 60), pad("4", 70)]), "maj@4")
    assert res.votes == {"3": 2, "4": 2}
    assert res.answer == "4"  # tie: "4"'s first sample finished first
    res = ask(FakeEngine([pad("3", 50), pad("4", 40), pad("3", 60)]), "maj@3")
    assert res.answer == "3" and res.winner == 0


def test_extraction_failures_do_not_vote() -> None:
    scripts = [" no idea at all", " still nothing here", pad("12", 40)]
    res = ask(FakeEngine(scripts), "maj@3")
    assert res.votes == {"12": 1} and res.answer == "12"
    assert [s.answer for s in res.samples] == [None, None, "12"]


# -- adaptive ------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [(1, 0), (4, 0), (5, 2), (7, 3), (0, 0), (10, 10)])
def test_beta_confidence_closed_form_matches_scipy(a: int, b: int) -> None:
    assert beta_confidence(a, b) == pytest.approx(1 - betainc(a + 1, b + 1, 0.5), abs=1e-12)


def _first_stop(answers: list[str], threshold: float = 0.95) -> int:
    """By hand: the sample count at which the Beta rule first fires."""
    for n in range(1, len(answers) + 1):
        counts = sorted((answers[:n].count(x) for x in set(answers[:n])), reverse=True) + [0]
        if 1 - betainc(counts[0] + 1, counts[1] + 1, 0.5) >= threshold:
            return n
    return len(answers)


@pytest.mark.parametrize("answers", [
    ["7"] * 10,
    ["7", "8", "7", "7", "8", "7", "7", "7", "7", "7", "7", "7"],
    ["1", "2", "3", "1", "1", "2", "1", "1", "1", "1", "1", "1", "1", "1"],
])
def test_adaptive_beta_stops_where_the_formula_says(answers: list[str]) -> None:
    # wave=1: one sample at a time, each one longer so the finish order is the index order
    scripts = [pad(a, 30 + i) for i, a in enumerate(answers)]
    res = ask(FakeEngine(scripts), f"adaptive:max={len(answers)},conf=0.95,wave=1,give_up=0")
    expected = _first_stop(answers)
    finished = [s for s in res.samples if s.finish_reason == "stop"]
    assert len(finished) == expected
    assert res.stop_reason == ("beta-confident" if expected < len(answers) or
                               beta_rule(answers, 0.95) else "k-max-reached")


def test_adaptive_batched_waves_refill_and_cancel() -> None:
    scripts = [pad("5", 30 + 3 * i) for i in range(12)]
    res = ask(FakeEngine(scripts), "adaptive:max=12,wave=3,conf=0.95,refill=eager")
    assert res.answer == "5"
    assert res.stop_reason == "beta-confident"
    assert res.stats.samples_started < 12
    assert sum(1 for s in res.samples if s.finish_reason == "stop") == 4  # 4 agreeing answers: 0.969
    assert any(s.finish_reason == "cancelled" for s in res.samples)


def test_default_adaptive_stops_at_two_agreeing_answers() -> None:
    # Beta(3, 1): P(p1 > p2) = 0.875 >= 0.8; a wave of 2, nothing else started (lazy refill)
    res = ask(FakeEngine([pad("5", 30 + i) for i in range(8)]), "adaptive:max=8")
    assert res.answer == "5" and res.stop_reason == "beta-confident" and len(res.samples) == 2
    # a split first wave: the live sample alone could not decide, so one more starts at a time
    split = ask(FakeEngine([pad("5", 30), pad("6", 31), pad("5", 32), pad("5", 33), pad("5", 34)]), "adaptive:max=8")
    assert split.answer == "5" and split.votes == {"5": 3, "6": 1} and split.stop_reason == "beta-confident"


def _reach_by_hand(answers: list[str], left: int, threshold: float) -> float:
    """reach_probability from scipy's Dirichlet-multinomial and betainc, by enumeration."""
    from collections import Counter

    from scipy.stats import dirichlet_multinomial

    counts = sorted(Counter(answers).values(), reverse=True) + [0]
    a, b, rest = counts[0], counts[1], sum(counts[2:])
    total = 0.0
    for x1 in range(left + 1):
        for x2 in range(left + 1 - x1):
            hi, lo = max(a + x1, b + x2), min(a + x1, b + x2)
            if 1 - betainc(hi + 1, lo + 1, 0.5) >= threshold:
                alpha = [a, b, rest + 1.0] if b else [a, rest + 1.0]
                draws = [x1, x2, left - x1 - x2] if b else [x1, left - x1 - x2]
                if b or x2 == 0:
                    total += dirichlet_multinomial.pmf(draws, alpha, left)
    return total


@pytest.mark.parametrize("answers,left", [(["1", "2", "3", "4"], 12), (["1", "1", "2", "2"], 12), (["1", "2"], 14),
                                          (["1", "1", "1", "2", "2", "3"], 10), (["4", "4"], 3), (["1", "2", "3"], 0)])
@pytest.mark.parametrize("threshold", [0.8, 0.95])
def test_reach_probability_is_the_polya_urn_sum(answers: list[str], left: int, threshold: float) -> None:
    got = reach_probability(answers, left, threshold)
    if left == 0:
        assert got == float(beta_rule(answers, threshold))
    else:
        assert got == pytest.approx(_reach_by_hand(answers, left, threshold), abs=1e-9)


def _first_give_up(answers: list[str], k_max: int, threshold: float = 0.8, give_up: float = 0.5) -> int | None:
    """By hand: the sample count at which adaptive gives up (None: it does not)."""
    for n in range(1, len(answers) + 1):
        if beta_rule(answers[:n], threshold):
            return None
        if n >= 4 and _reach_by_hand(answers[:n], k_max - n, threshold) < give_up:
            return n
    return None


@pytest.mark.parametrize("answers", [
    [str(i) for i in range(16)],  # every answer new: it gives up at 5 (0.531, then 0.462)
    ["1", "2", "3", "1", "4", "5", "6", "2", "7", "8", "9", "3", "10", "11", "12", "13"],
    ["1", "2", "1", "2", "3", "4", "1", "2", "5", "6", "7", "8", "9", "10", "11", "12"],
])
def test_default_adaptive_gives_up_where_answers_spread(answers: list[str]) -> None:
    """Through the scheduler with the fake engine: the default (max 16, conf 0.8, give_up 0.5)."""
    scripts = [pad(a, 30 + i) for i, a in enumerate(answers)]
    res = ask(FakeEngine(scripts), "adaptive")
    expected = _first_give_up(answers, 16)
    assert expected is not None and expected < 16
    answered = [s for s in res.samples if s.finish_reason == "stop"]
    assert len(answered) == expected and res.stop_reason == "gave-up"
    assert res.answer == majority_of(answers[:expected])
    never = ask(FakeEngine(scripts), "adaptive:give_up=0")
    assert never.stop_reason == "k-max-reached" and len(never.samples) == 16


def test_adaptive_does_not_give_up_where_answers_agree() -> None:
    answers = ["1", "2", "3", "1", "1"] + ["1"] * 11
    res = ask(FakeEngine([pad(a, 30 + i) for i, a in enumerate(answers)]), "adaptive")
    assert _first_give_up(answers, 16) is None
    assert res.stop_reason == "beta-confident" and res.answer == "1"


def majority_of(answers: list[str]) -> str:
    """Most common; ties to the first seen (finish order = index order here)."""
    return max(dict.fromkeys(answers), key=answers.count)


def test_esc_window_rule() -> None:
    assert esc_rule(["1", "2", "3", "3"], 2) and not esc_rule(["1", "2", "3"], 2)
    assert not esc_rule([None, None], 2)
    scripts = [pad(a, 30 + i) for i, a in enumerate(["1", "2", "3", "3", "4", "4"])]
    res = ask(FakeEngine(scripts), "adaptive:max=6,wave=2,rule=esc,window=2,refill=eager")
    assert res.stop_reason == "esc-confident"
    assert sum(1 for s in res.samples if s.finish_reason == "stop") == 4


# -- early exit ----------------------------------------------------------------
def test_early_exit_stops_once_window_probes_agree_and_not_before() -> None:
    answers = {32: "3", 64: "9", 96: "9", 128: "9"}
    eng = FakeEngine([" " + "y" * 400], probe=lambda seq, n: answers.get(n, ""))
    res = ask(eng, "early-exit:every=32,window=2", max_new=600)
    assert res.answer == "9"
    assert res.stop_reason == "probes-agreed"
    assert [p.at_token for p in res.probes] == [32, 64, 96]
    assert res.samples[0].finish_reason == "early-exit" and res.samples[0].n_tokens == 96
    assert res.samples[0].answer_source == "probe"
    assert res.stats.probe_tokens > 0


def test_early_exit_ignores_hedged_and_empty_probes() -> None:
    answers = {32: "9 hmm, wait", 64: "9", 96: "", 128: "9", 160: "9"}
    eng = FakeEngine([" " + "y" * 400], probe=lambda seq, n: answers.get(n, ""))
    res = ask(eng, "early-exit:every=32,window=2", max_new=600)
    assert [p.at_token for p in res.probes] == [32, 64, 96, 128, 160]
    assert res.samples[0].n_tokens == 160


def test_early_exit_runs_to_the_end_without_agreement() -> None:
    eng = FakeEngine([pad("4", 100)], probe=lambda seq, n: str(n))
    res = ask(eng, "early-exit:every=32,window=2")
    assert res.stop_reason == "all-finished" and res.answer == "4"
    assert res.samples[0].finish_reason == "stop"


# -- best of k -----------------------------------------------------------------
def test_best_of_k_picks_the_most_certain_answer() -> None:
    scripts = [pad("1", 40), pad("2", 40), pad("3", 40)]
    res = ask(FakeEngine(scripts, margins=[3.0, 9.0, 5.0]), "best@3")
    assert res.answer == "2" and res.winner == 1
    lp = [s.answer_logprob for s in res.samples]
    assert lp[1] > lp[2] > lp[0]


# -- deadline ------------------------------------------------------------------
def test_deadline_forces_an_answer_probe() -> None:
    eng = FakeEngine([" " + "z" * 500, " " + "z" * 500], probe=lambda seq, n: "42")
    res = ask(eng, "maj@2", deadline=1.0, clock=StepClock(), max_new=600)
    assert res.stop_reason == "deadline"
    assert res.answer == "42"
    assert {s.finish_reason for s in res.samples} == {"deadline"}
    assert res.probes and res.probes[-1].answer == "42"


def test_deadline_prefers_votes_of_finished_samples() -> None:
    eng = FakeEngine([pad("8", 30), " " + "z" * 500], probe=lambda seq, n: "1")
    res = ask(eng, "maj@2", deadline=4.0, clock=StepClock(), max_new=600)
    assert res.stop_reason == "deadline" and res.answer == "8" and not res.probes


def test_same_inputs_same_result() -> None:
    scripts = [pad(str(i % 3), 30 + 7 * i) for i in range(6)]
    a = ask(FakeEngine(scripts), "short-2@6").to_dict()
    b = ask(FakeEngine(scripts), "short-2@6").to_dict()
    for r in (a, b):
        for key in ("wall_s", "prefill_s", "ttft_s", "peak_rss_bytes", "queue_s"):
            r["stats"].pop(key)
        for s in r["samples"]:
            s.pop("finished_at_s")
    assert a == b


# -- auto: both stages in one batch ---------------------------------------------
def auto_plan(escalate: str | None, confidence: float = 0.8) -> Plan:
    esc = parse_strategy(escalate) if escalate is not None else None
    assert esc is None or isinstance(esc, Adaptive)
    return plan_of(Escalate(stage1=EarlyExit(every=32, window=2, k=1, probe=20), escalation=esc,
                            confidence=confidence), 400)


def ask_auto(engine: FakeEngine, escalate: str | None, *, deadline=None, clock=None, step_time=None):
    q = Query(prompt_tokens=QUESTION, plan=auto_plan(escalate), answer_kind="number",
              config=GenerationConfig(max_new_tokens=400, sampling=GREEDY), deadline=due(deadline, clock),
              step_time=step_time)
    watch = LaneWatch()
    res = run(engine, q, clock=clock, on_step=watch)
    assert len(engine.sessions) == 1  # the scheduler's shared session
    return res, watch.ids


def test_auto_stops_after_a_confident_first_answer() -> None:
    eng = FakeEngine([pad("7", 30), pad("9", 20), pad("9", 20)])
    res, _ = ask_auto(eng, "adaptive:max=2,wave=2,window=2")
    assert res.answer == "7" and res.outcome.name == "confident"
    assert res.stop_reason == "confident:all-finished" and len(res.samples) == 1
    assert res.outcome.stage1_certainty > 0.99


def test_auto_keeps_the_greedy_answer_when_its_adaptive_escalation_gives_up() -> None:
    # stage 1 unsure says 7; the escalation's answers all differ: with 7 as a vote, four answers
    # in, the Beta rule's chance within the 4 samples left is 0.29 < 0.5 (reach_probability)
    answers = ["7", "1", "2", "3", "4", "5", "6", "8", "9"]
    eng = FakeEngine([pad(a, 30 + i) for i, a in enumerate(answers)], margins=[5.0] + [30.0] * 8)
    res, _ = ask_auto(eng, "adaptive:max=8,wave=2")
    assert reach_probability(["7", "1", "2", "3"], 8 - 3, 0.8) < 0.5
    assert res.stop_reason == "escalated:gave-up" and res.answer == "7" and res.winner == 0
    assert len([s for s in res.samples if s.finish_reason == "stop"]) == 4


def test_auto_escalates_in_the_same_batch_with_the_first_answer_as_a_vote() -> None:
    # sample 0 is unsure (margin 5: p = e^5 / (e^5 + 256) = 0.37 per token); the wave outvotes it
    eng = FakeEngine([pad("7", 30), pad("9", 20), pad("9", 22), pad("9", 24)], margins=[5.0, 30, 30, 30])
    res, lanes = ask_auto(eng, "adaptive:max=3,wave=2,window=3")
    assert lanes == [1 + 3 + 1]  # one lane (one prompt read): sample 0, three wave samples, a probe slot
    assert res.outcome.name == "escalated" and res.stop_reason.startswith("escalated:")
    assert res.outcome.stage1_certainty < 0.8
    assert res.answer == "9" and res.winner in (1, 2, 3)
    assert [s.index for s in res.samples] == [0, 1, 2, 3]
    # Beta rule on [7, 9, 9]: P(p1 > p2) = 1 - I_0.5(3, 2) = 0.6875 < 0.95, so the third wave sample runs
    assert res.votes == {"7": 1, "9": 3}


def test_auto_first_answer_can_win_the_vote() -> None:
    eng = FakeEngine([pad("7", 30), pad("9", 20), pad("8", 22)], margins=[5.0, 30, 30])
    res, _ = ask_auto(eng, "adaptive:max=2,wave=2,window=2")
    assert res.outcome.name == "escalated"
    assert res.answer == "7" and res.winner == 0  # a three-way tie goes to the answer given first
    assert res.text == eng.scripts[0].strip() or res.text == eng.scripts[0]


def test_auto_does_not_escalate_when_a_wave_would_miss_the_deadline() -> None:
    # each read of the clock advances 10 ms; a step of 2 samples is said to take 50 ms, so a wave
    # of ~38 steps needs ~1.9 s; the deadline leaves far less after sample 0's 30 steps
    eng = FakeEngine([pad("7", 30), pad("9", 20), pad("9", 20)], margins=[5.0, 30, 30])
    res, _ = ask_auto(eng, "adaptive:max=2,wave=2,window=2", deadline=2.0, clock=StepClock(),
                      step_time=lambda k: 0.025 * k)
    assert res.outcome.name == "no-time-to-escalate"
    assert len(res.samples) == 1 and res.answer == "7"


def test_auto_without_escalation_target_stays_with_the_first_sample() -> None:
    eng = FakeEngine([pad("7", 30), pad("9", 20)], margins=[5.0, 30])
    res, _ = ask_auto(eng, None)
    assert res.outcome.name == "no-escalation" and len(res.samples) == 1 and res.answer == "7"


def test_auto_narrows_the_wave_to_fit_the_time_left() -> None:
    # a wave of 4 at 0.1 s/step needs ~3.9 s for 39 steps; a wave of 2 at 0.04 s/step ~1.6 s
    eng = FakeEngine([pad("7", 30)] + [pad("9", 30)] * 4, margins=[5.0, 30, 30, 30, 30])
    step = {1: 0.02, 2: 0.04, 4: 0.1}
    clock = StepClock()
    res, _ = ask_auto(eng, "adaptive:max=4,wave=4,window=4", deadline=6.0, clock=clock,
                      step_time=lambda k: step.get(k, 0.1))
    assert res.outcome.name == "escalated"
    by = {s.index: s for s in res.samples}
    assert by[1].finish_reason == by[2].finish_reason == "stop"
    assert abs(by[1].finished_at_s - by[2].finished_at_s) < 0.05  # same step (the clock ticks per read)
    # a wave of 4 would have run samples 3 and 4 alongside 1 and 2; they start only as 1 and 2 end
    assert 3 not in by or by[3].finished_at_s > by[1].finished_at_s + 0.2


def test_lazy_refill_starts_no_sample_the_live_ones_may_make_unneeded() -> None:
    scripts = [pad("4", 30), pad("4", 40), pad("4", 50), pad("4", 200)]
    eager = ask(FakeEngine(scripts), "adaptive:max=4,wave=3,conf=0.9,refill=eager")
    lazy = ask(FakeEngine(scripts), "adaptive:max=4,wave=3,conf=0.9,refill=lazy")
    assert eager.answer == lazy.answer == "4"
    assert eager.stop_reason == lazy.stop_reason == "beta-confident"
    assert len(eager.samples) == 4 and eager.samples[3].finish_reason == "cancelled"
    assert len(lazy.samples) == 3  # sample 3 never started: the three live ones could (and did) decide
    assert lazy.stats.generated_tokens == 30 + 40 + 50 < eager.stats.generated_tokens
    # when the live ones cannot decide alone, lazy refills like eager
    split = [pad("4", 30), pad("5", 40), pad("4", 50), pad("4", 60)]
    assert len(ask(FakeEngine(split), "adaptive:max=4,wave=2,conf=0.9,refill=lazy").samples) == 4
