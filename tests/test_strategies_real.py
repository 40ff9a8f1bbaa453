"""Every strategy end to end on the real default model."""

from __future__ import annotations

import pytest

from edgescale.api import AskOptions, Budget
from tests.scheduling import WAIT_S, DecodeClock, scheduler_on

Q = "Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step."
OPTS = AskOptions(max_tokens=64, seed=11, answer="number")


@pytest.mark.parametrize("spec", ["single", "maj@4", "ffs@4", "short-2@4", "best@4", "ffs@4:rule=any",
                                  "conf@4", "conf@4:online=1,warmup=2,window=8", "maj@4:vote=conf",
                                  "maj@4:temp=0.4", "conf@4:online=1,warmup=2,window=8,temp=0.4", "adaptive:max=6",
                                  "adaptive:max=6,wave=3", "adaptive:max=6,wave=2,rule=esc,window=2",
                                  "early-exit:every=16,window=2", "early-exit:every=16,window=2,k=2"])
def test_strategy_runs_end_to_end(runtime, spec: str) -> None:
    res = runtime.ask(Q, strategy=spec, options=OPTS)
    assert res.samples and res.stats.generated_tokens == sum(s.n_tokens for s in res.samples)
    assert res.stop_reason
    assert res.stats.peak_kv_bytes > 0
    used, _ = runtime.scheduler.kv_cells()  # its samples' cells are free; only the prompt cache remains
    assert runtime.scheduler.running == 0 and used <= runtime.scheduler.cache_cells()
    winner = res.samples[res.winner] if res.winner is not None else None
    assert res.answer == (winner.answer if winner is not None else None)  # the winner's answer, or none
    assert res.answer is None or res.votes[res.answer] >= 1 or winner.answer_source == "probe"
    assert (res.stats.probe_tokens > 0) == spec.startswith("early-exit")
    # DeepConf's trace scores exist exactly where a strategy decides by them
    weighted = spec.startswith("conf@") or "vote=conf" in spec
    assert all((s.confidence is not None) == (weighted and s.n_tokens > 0) for s in res.samples)
    assert not res.skipped or spec.startswith(("ffs@4", "short-2@4"))


def test_ffs_spends_fewer_tokens_than_majority_on_same_seeds(runtime) -> None:
    short = "What is 3 + 4? Answer in one short sentence."
    opts = AskOptions(max_tokens=200, seed=11, answer="number")
    maj = runtime.ask(short, strategy="maj@6", options=opts)
    ffs = runtime.ask(short, strategy="ffs@6", options=opts)
    # same seeds -> the same six sequences; FFS stops them when the first one with an answer ends
    first = min(s.n_tokens for s in maj.samples if s.finish_reason == "stop" and s.answer is not None)
    assert ffs.samples[ffs.winner].n_tokens == first
    assert ffs.stats.generated_tokens < maj.stats.generated_tokens
    assert ffs.stats.cancelled_tokens > 0
    for s_ffs, s_maj in zip(ffs.samples, maj.samples):
        assert s_maj.text.startswith(s_ffs.text)  # cut short, never changed


def test_early_exit_probes_do_not_change_the_sample(runtime) -> None:
    plain = runtime.ask(Q, strategy="single", options=OPTS)
    # a window the probes cannot satisfy keeps the sample running to its end
    probed = runtime.ask(Q, strategy="early-exit:every=8,window=16", options=OPTS)
    assert probed.stats.probe_tokens > 0
    assert probed.samples[0].text == plain.samples[0].text


def test_same_seed_same_result(runtime) -> None:
    a = runtime.ask(Q, strategy="short-2@4", options=OPTS)
    b = runtime.ask(Q, strategy="short-2@4", options=OPTS)
    assert (a.answer, a.votes, [s.text for s in a.samples]) == (b.answer, b.votes, [s.text for s in b.samples])


def test_deadline_on_real_model(runtime) -> None:
    # on the scheduler's clock, 20 ms a decode: 2000 tokens would take 40 s
    clock = DecodeClock(step_s=0.02)
    with scheduler_on(clock.wrap(runtime.engine), clock) as scheduler:
        request = runtime.request("Write a very long story about the sea.", strategy="maj@4",
                                  budget=Budget(deadline_s=0.8), max_tokens=2000, arrival=clock())
        res = scheduler.submit(request).result(timeout=WAIT_S)
    assert res.stop_reason == "deadline"
    assert res.stats.wall_s <= 0.8
    assert all(s.finish_reason in ("deadline", "stop") for s in res.samples)


def test_auto_escalates_to_deepconf_on_the_real_model(runtime) -> None:
    """The default policy's kind of escalation (DeepConf online at T 0.4), forced: a threshold
    no greedy answer reaches (above 1), and too few tokens for two probes to agree (stage 1
    probes every 32, its window is 2)."""
    from edgescale.strategies.policy import AutoPolicy
    from edgescale.strategies.spec import Confidence

    runtime.use_policy(AutoPolicy("always", 1.01, Confidence(k=4, online=True, warmup=2, window=8, temp=0.4)))
    try:
        res = runtime.ask("What is 7 plus 8? Think step by step.", strategy="auto",
                          options=AskOptions(max_tokens=48, seed=3, answer="number"))
    finally:
        runtime.use_policy(None)
    assert res.stats.generated_tokens == sum(s.n_tokens for s in res.samples)
    assert res.outcome is not None and res.outcome.name == "escalated" and res.stop_reason.startswith("escalated")
    # stage 1, then DeepConf's own scored samples
    assert len(res.samples) > 1 and all(s.confidence is not None for s in res.samples[1:] if s.n_tokens)
    assert res.answer is None or res.answer in res.votes or res.samples[0].answer == res.answer
    if res.samples[0].answer is not None:  # stage 1's sample votes in DeepConf's tally
        assert res.samples[0].answer in res.votes


def test_give_up_rules_end_to_end_on_the_real_model(runtime) -> None:
    """Where SmolLM2's answers spread (object counting), adaptive gives up exactly where the rule
    says, from the samples it finished; online DeepConf with give_up stops after its warm-up."""
    from edgescale.evals.datasets import load
    from edgescale.strategies.voting import beta_rule, reach_probability

    opts = AskOptions(max_tokens=48, seed=0, answer="number")
    gave_up = 0
    for item in load("count-objects", limit=6):
        res = runtime.ask(item.question, strategy="adaptive", options=opts)
        done = sorted((s for s in res.samples if s.finish_reason in ("stop", "length")),
                      key=lambda s: s.finished_at_s)
        answers = [s.answer for s in done]
        counted = sum(a is not None for a in answers)
        if res.stop_reason == "gave-up":
            gave_up += 1
            assert counted >= 4 and not beta_rule(answers, 0.8)
            assert reach_probability(answers, 16 - len(answers), 0.8) < 0.5
            assert res.answer == max(res.votes, key=lambda a: res.votes[a]) and len(res.samples) < 16
        elif res.stop_reason == "beta-confident":
            assert beta_rule(answers, 0.8)
        conf = runtime.ask(item.question, strategy="conf@8:online=1,temp=0.4,give_up=0.75", options=opts)
        warm = [s.answer for s in conf.samples[:4] if s.answer is not None]
        if conf.stop_reason == "gave-up":
            assert len(conf.samples) == 4 and len(set(warm)) >= 0.75 * len(warm)
        auto = runtime.ask(item.question, strategy="auto", options=opts)
        if auto.stop_reason == "escalated:gave-up":  # the default escalation gave up: the greedy answer stands
            assert auto.answer is not None and auto.answer == auto.samples[0].answer and auto.winner == 0
    assert gave_up >= 1  # the set is there for this: answers spread
