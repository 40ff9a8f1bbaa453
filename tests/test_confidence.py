"""DeepConf's confidence-weighted voting, exact rules on the scripted fake engine (each
sample's margin sets how sure the 'model' is of its tokens), and the scores themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgescale.runtime.generate import GenerationConfig, SeqState, token_confidence
from edgescale.runtime.sampling import GREEDY
from edgescale.scheduler.runner import Query, StepCallback
from edgescale.strategies.confidence import group_confidences, trace_score
from edgescale.strategies.spec import EarlyExit, Escalate, confidence_of, parse_strategy
from tests.fake_engine import VOCAB, FakeEngine
from tests.test_strategies import QUESTION, LaneWatch, pad, plan_of, run

SURE, UNSURE = 30.0, 2.0


def ask(engine: FakeEngine, spec: str, max_new: int = 400):  # type: ignore[no-untyped-def]
    strategy = parse_strategy(spec)
    conf = confidence_of(strategy)
    config = GenerationConfig(max_new_tokens=max_new, sampling=GREEDY, confidence_top_k=conf.topk if conf else 0)
    return run(engine, Query(prompt_tokens=QUESTION, plan=plan_of(strategy, max_new), answer_kind="number",
                                   config=config))


def fake_confidence(margin: float, topk: int = 5) -> float:
    """The fake's rows: ``margin`` on one token, 0 on the other VOCAB - 1."""
    lse = math.log(math.exp(margin) + VOCAB - 1)
    return lse - margin / topk


def test_token_confidence_is_minus_the_mean_top_k_logprob() -> None:
    rng = np.random.default_rng(0)
    row = rng.normal(size=1000).astype(np.float32)
    lse = float(np.log(np.exp(row.astype(np.float64)).sum()))
    logp = row.astype(np.float64) - lse
    assert token_confidence(row, lse, 7) == pytest.approx(-np.sort(logp)[-7:].mean(), rel=1e-6)
    assert fake_confidence(SURE) > fake_confidence(UNSURE)


def test_a_trace_scores_its_least_confident_window() -> None:
    assert group_confidences([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]
    assert group_confidences([5, 1], 4) == [3.0]  # shorter than the window: one group
    st = SeqState(index=0, seed=0, confidences=[9, 9, 1, 1, 9, 9])
    assert trace_score(st, 2) == 1.0 and trace_score(SeqState(index=1, seed=0), 2) is None


def test_confident_minority_outweighs_an_unsure_majority() -> None:
    scripts = [pad("5", 40), pad("5", 41), pad("5", 42), pad("7", 43), pad("7", 44)]
    margins = [UNSURE, UNSURE, UNSURE, SURE, SURE]
    counted = ask(FakeEngine(scripts, margins=margins), "maj@5")
    assert counted.answer == "5"
    weighted = ask(FakeEngine(scripts, margins=margins), "maj@5:vote=conf")
    assert weighted.answer == "7" and weighted.votes == {"7": 2, "5": 3} and weighted.winner == 3
    offline = ask(FakeEngine(scripts, margins=margins), "conf@5")
    assert offline.answer == "7" and offline.stop_reason == "all-finished"
    assert offline.stats.generated_tokens == sum(len(s) for s in scripts)


def test_keep_drops_the_least_confident_traces_before_the_vote() -> None:
    scripts = [pad("5", 40), pad("5", 41), pad("7", 43), pad("7", 44)]
    margins = [SURE, 29.0, 5.0, 4.0]
    res = ask(FakeEngine(scripts, margins=margins), "conf@4:keep=0.5")
    assert res.votes == {"5": 2} and res.answer == "5"
    # equal weights for the kept: the tie goes to the first finisher, as everywhere
    tied = ask(FakeEngine([pad("5", 41), pad("7", 40)], margins=[SURE, SURE]), "conf@2")
    assert tied.answer == "7"


def test_online_stops_unsure_samples_and_stops_at_consensus() -> None:
    # warm-up: samples 0-1, sure, disagree; then 2-5 start: the unsure ones are stopped
    scripts = [pad("5", 40), pad("7", 41), pad("5", 60), pad("9", 200), pad("9", 210), pad("5", 70)]
    margins = [SURE, 28.0, SURE, UNSURE, UNSURE, SURE]
    res = ask(FakeEngine(scripts, margins=margins), "conf@6:online=1,warmup=2,window=8")
    by = {s.index: s for s in res.samples}
    assert by[3].finish_reason == by[4].finish_reason == "low-confidence"
    assert by[3].n_tokens == by[4].n_tokens == 8  # stopped once a full window fell below the threshold
    assert res.answer == "5" and "9" not in res.votes
    # agreement in the warm-up: nothing more is started
    agreed = ask(FakeEngine([pad("4", 30), pad("4", 31), pad("4", 90), pad("4", 95)], margins=[SURE] * 4),
                 "conf@4:online=1,warmup=2")
    assert agreed.stop_reason == "consensus" and len(agreed.samples) == 2 and agreed.answer == "4"


@pytest.mark.parametrize("warmup,stops", [(["1", "2", "3", "4"], True), (["1", "2", "3", "1"], True),
                                          (["1", "1", "2", "2"], False), (["1", "2", None, None], True),
                                          (["1", None, None, None], False)])
def test_online_gives_up_when_the_warmup_spreads(warmup: list[str | None], stops: bool) -> None:
    """give_up=0.75: 3 or 4 different answers among 4 (or 2 of 2 answered) end the query after
    the warm-up with its weighted vote; otherwise the other samples start."""
    scripts = [pad(a, 40 + i) if a is not None else " " + "x" * (39 + i) for i, a in enumerate(warmup)]
    scripts += [pad("1", 60 + i) for i in range(4)]
    res = ask(FakeEngine(scripts, margins=[SURE] * 8), "conf@8:online=1,warmup=4,give_up=0.75")
    answered = [a for a in warmup if a is not None]
    assert (len(answered) >= 2 and len(set(answered)) >= 0.75 * len(answered)) == stops
    if stops:
        assert res.stop_reason == "gave-up" and len(res.samples) == 4
        assert res.answer == answered[0]  # equal weights: the first finisher's answer
    else:  # a split of two answers goes on; one answer alone is a consensus
        assert res.stop_reason == ("consensus" if len(answered) == 1 else "all-finished")
        assert len(res.samples) == (4 if len(answered) == 1 else 8)
    never = ask(FakeEngine(scripts, margins=[SURE] * 8), "conf@8:online=1,warmup=4")
    assert never.stop_reason != "gave-up"


def test_adaptive_can_decide_by_weight() -> None:
    scripts = [pad("5", 40), pad("7", 41), pad("5", 42), pad("7", 43)]
    margins = [UNSURE, SURE, UNSURE, SURE]
    res = ask(FakeEngine(scripts, margins=margins), "adaptive:max=4,wave=4,conf=0.99,vote=conf")
    assert res.answer == "7" and res.stop_reason == "k-max-reached"


def test_adaptive_gives_up_with_the_weighted_vote_under_vote_conf() -> None:
    # 16 different answers: the default gives up at the fifth (reach probability 0.462 < 0.5);
    # counted, the five tie and the first finisher's 1 wins; weighted, the one sure trace's 4 wins
    scripts = [pad(str(i + 1), 30 + i) for i in range(16)]
    margins = [UNSURE, UNSURE, UNSURE, SURE] + [UNSURE] * 12
    counted = ask(FakeEngine(scripts, margins=margins), "adaptive")
    weighted = ask(FakeEngine(scripts, margins=margins), "adaptive:vote=conf")
    assert counted.stop_reason == weighted.stop_reason == "gave-up"
    assert counted.answer == "1" and weighted.answer == "4" and weighted.winner == 3
    assert len([s for s in weighted.samples if s.finish_reason == "stop"]) == 5


# -- auto escalating to DeepConf ------------------------------------------------------
def ask_auto(engine: FakeEngine, escalate: str, confidence: float = 0.8,  # type: ignore[no-untyped-def]
             on_step: StepCallback | None = None):
    strategy = Escalate(stage1=EarlyExit(every=32, window=2, k=1, probe=20), escalation=parse_strategy(escalate),
                        confidence=confidence)  # type: ignore[arg-type]
    conf = confidence_of(strategy)
    assert conf is not None  # the escalation's DeepConf settings make the engine score tokens from sample 0 on
    config = GenerationConfig(max_new_tokens=400, sampling=GREEDY, confidence_top_k=conf.topk)
    return run(engine, Query(prompt_tokens=QUESTION, plan=plan_of(strategy, 400), answer_kind="number",
                                   config=config), on_step=on_step)


def test_auto_escalates_to_online_deepconf_on_new_samples() -> None:
    # sample 0 is unsure and says 5; the warm-up (samples 1-2, sure) agrees: consensus with
    # stage 1's vote, nothing more starts
    scripts = [pad("5", 30), pad("5", 40), pad("5", 41), pad("9", 200), pad("9", 200)]
    margins = [5.0, SURE, SURE, UNSURE, UNSURE]
    eng = FakeEngine(scripts, margins=margins)
    watch = LaneWatch()
    res = ask_auto(eng, "conf@4:online=1,warmup=2", on_step=watch)
    assert res.outcome.name == "escalated" and res.stop_reason == "escalated:consensus"
    assert res.answer == "5" and res.votes == {"5": 3}  # stage 1's sample votes in DeepConf
    assert [s.index for s in res.samples] == [0, 1, 2]
    # one batch: sample 0, the four DeepConf samples, a probe slot (one lane of the one shared session)
    assert len(eng.sessions) == 1 and watch.ids == [1 + 4 + 1]
    # offline DeepConf: all four run, and the weighted vote decides
    offline = ask_auto(FakeEngine(scripts, margins=margins), "conf@4")
    assert offline.answer == "5" and len(offline.samples) == 5 and offline.stop_reason == "escalated:all-finished"


def test_stage_one_vote_weighs_its_score_in_the_consensus() -> None:
    # sample 0 (score ~4.4) says 7 against a sure warm-up's 5 (2 x ~24): a weighted share of
    # about 0.92, under the 0.95 consensus, so the other two samples start; unsure, they are
    # stopped at their first window below the warm-up's threshold and do not vote
    scripts = [pad("7", 30), pad("5", 40), pad("5", 41), pad("9", 200), pad("9", 200)]
    margins = [5.0, SURE, SURE, UNSURE, UNSURE]
    res = ask_auto(FakeEngine(scripts, margins=margins), "conf@4:online=1,warmup=2")
    share = 2 * fake_confidence(SURE) / (2 * fake_confidence(SURE) + fake_confidence(5.0))
    assert 0.9 < share < 0.95
    assert res.stop_reason == "escalated:all-finished" and res.answer == "5"
    assert res.votes == {"5": 2, "7": 1}
    assert [s.finish_reason for s in res.samples[3:]] == ["low-confidence", "low-confidence"]


def test_stage_one_vote_breaks_a_split_warmup() -> None:
    # the warm-up splits 5 / 7 at equal weight; alone, the first to finish (5) would win;
    # sample 0's vote makes it 7 (no give-up rule here)
    scripts = [pad("7", 30), pad("5", 40), pad("7", 41)]
    res = ask_auto(FakeEngine(scripts, margins=[SURE, 20.0, 20.0]), "conf@2:online=1,warmup=2", confidence=1.0)
    assert res.answer == "7" and res.votes == {"7": 2, "5": 1}
    alone = ask(FakeEngine(scripts[1:], margins=[20.0, 20.0]), "conf@2:online=1,warmup=2")
    assert alone.answer == "5"


def test_auto_keeps_stage_one_answer_when_no_escalated_sample_has_one() -> None:
    scripts = [pad("7", 30), " " + "z" * 40, " " + "z" * 41]
    res = ask_auto(FakeEngine(scripts, margins=[5.0, SURE, SURE]), "conf@2")
    assert res.outcome.name == "escalated" and len(res.samples) == 3
    assert res.answer == "7" and res.winner == 0


def test_auto_default_escalation_gives_up_where_the_warmup_spreads() -> None:
    from edgescale.strategies.policy import DEFAULT_POLICY

    assert DEFAULT_POLICY.escalation is not None
    spec = DEFAULT_POLICY.escalation.spec()
    assert "give_up=1" in spec and "online=1" in spec
    assert "warmup=2" in spec  # issue 28: two warm-up samples and sample 0's vote (docs/BENCHMARKS.md)
    scripts = [pad("7", 30), pad("1", 40), pad("2", 41)] + [pad("1", 90)] * 6
    res = ask_auto(FakeEngine(scripts, margins=[5.0] + [SURE] * 8), spec)
    assert res.stop_reason == "escalated:gave-up" and len(res.samples) == 3  # sample 0 and the warm-up
    # the warm-up's answers spread: stage 1's greedy answer stands, the votes are shown
    assert res.answer == "7" and res.winner == 0 and res.votes == {"1": 1, "2": 1, "7": 1}
