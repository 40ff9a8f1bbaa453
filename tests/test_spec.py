"""The strategy spec syntax: tables of valid and invalid forms, and a property test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgescale.errors import InvalidSpec
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    EarlyExit,
    FirstFinish,
    Majority,
    ShortM,
    Single,
    draws_one_sample,
    parse_strategy,
    samples_of,
    with_samples,
)


@pytest.mark.parametrize("text,expected", [
    ("single", Single()),
    ("greedy", Single()),
    ("maj@8", Majority(8)),
    ("majority@3", Majority(3)),
    (" MAJ@5 ", Majority(5)),
    ("maj", Majority(6)),
    ("ffs@8", FirstFinish(8)),
    ("ffs", FirstFinish(6)),
    ("short-3@8", ShortM(3, 8)),
    ("short-2", ShortM(2, 6)),
    ("ffs@4:rule=any", FirstFinish(4, rule="any")),
    ("short-2@5:rule=answered", ShortM(2, 5)),
    ("short-2@5:rule=any", ShortM(2, 5, rule="any")),
    ("best@4", BestOfK(4)),
    ("adaptive", Adaptive()),
    ("adaptive:max=16,conf=0.9", Adaptive(max=16, conf=0.9)),
    ("adaptive:rule=esc,window=3,wave=3", Adaptive(rule="esc", window=3, wave=3)),
    ("early-exit", EarlyExit()),
    ("early-exit:every=32,window=2", EarlyExit(every=32, window=2)),
    ("early-exit:every=16,window=3,k=4,probe=10", EarlyExit(every=16, window=3, k=4, probe=10)),
    ("auto", Auto()),
    ("maj@8:temp=0.5", Majority(8, temp=0.5)),
    ("maj@4:vote=conf,temp=1.2", Majority(4, vote="conf", temp=1.2)),
    ("adaptive:max=8,temp=0.4,refill=lazy", Adaptive(max=8, temp=0.4, refill="lazy")),
])
def test_valid_forms(text: str, expected: object) -> None:
    assert parse_strategy(text, default_k=6) == expected


@pytest.mark.parametrize("spec", ["single", "maj@8", "ffs@3", "short-3@8", "best@2",
                                  "ffs@3:rule=any", "short-2@4:rule=any", "adaptive:max=8,wave=2",
                                  "early-exit:every=16,window=3,k=2,probe=12", "auto",
                                  "maj@8:temp=0.5", "maj@8:vote=conf,temp=0.4", "adaptive:max=8,temp=0.4",
                                  "conf@8:online=1,temp=0.6"])
def test_canonical_spec_round_trips(spec: str) -> None:
    s = parse_strategy(spec)
    assert parse_strategy(s.spec()) == s


@pytest.mark.parametrize("text,needle", [
    ("", "unknown strategy"),
    ("maj@", "unknown strategy"),
    ("maj@0", "between 1 and 64"),
    ("maj@65", "between 1 and 64"),
    ("short-9@8", "m must not exceed k"),
    ("adaptive:conf=2", "conf must be"),
    ("adaptive:rule=vote", "rule must be"),
    ("adaptive:max=abc", "max must be a int"),
    ("adaptive:foo=1", "unknown parameter"),
    ("early-exit:every=1", "every must be"),
    ("maj@8:x=1", "unknown parameter"),
    ("ffs@8:rule=first", "rule must be answered or any"),
    ("short-2@4:m=3", "unknown parameter"),
    ("auto:fast", "auto takes one parameter"),
    ("maj@8:temp=0", "temp must be in (0, 2]"),
    ("adaptive:temp=3", "temp must be in (0, 2]"),
    ("conf@8:temp=-1", "temp must be in (0, 2]"),
    ("maj@8:temp=hot", "temp must be a float"),
    ("best@99999999999999999999999", "between 1 and 64"),
])
def test_invalid_forms_name_the_valid_ones(text: str, needle: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_strategy(text)
    msg = str(err.value)
    assert needle in msg and "valid forms" in msg and "\n" not in msg


def test_with_samples_and_samples_of() -> None:
    assert with_samples(Majority(8), 3) == Majority(3)
    assert with_samples(ShortM(3, 8), 2) == ShortM(2, 2)
    capped = with_samples(Adaptive(max=16, wave=8, window=6), 4)
    assert (capped.max, capped.wave, capped.window) == (4, 4, 4)
    assert with_samples(Single(), 4) == Single()
    assert [samples_of(s) for s in (Single(), Majority(5), Adaptive(max=12), EarlyExit(k=3))] == [1, 5, 12, 3]
    assert draws_one_sample(Single()) and draws_one_sample(Majority(1)) and draws_one_sample(EarlyExit())
    assert not draws_one_sample(Majority(2)) and not draws_one_sample(Adaptive(max=16))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_parser_accepts_a_spec_or_names_the_valid_forms(text: str) -> None:
    """Any text either parses to a strategy that prints back to an equal one, or raises
    InvalidSpec with one line naming the valid forms; never another exception."""
    try:
        parsed = parse_strategy(text)
    except InvalidSpec as exc:
        msg = str(exc)
        assert "valid forms" in msg and "\n" not in msg
        return
    assert parse_strategy(parsed.spec()) == parsed


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["maj@", "ffs@", "short-", "best@", "adaptive:", "early-exit:", "adaptive:max=",
                        "early-exit:every="]), st.text(alphabet="0123456789-=,.:@abcmxkw", max_size=20))
def test_parser_on_near_miss_specs(head: str, tail: str) -> None:
    try:
        s = parse_strategy(head + tail)
    except InvalidSpec:
        return
    assert parse_strategy(s.spec()) == s


def test_a_spec_sets_its_temperature_and_the_option_overrides_it() -> None:
    from edgescale.settings import AskOptions

    assert AskOptions().sampling_for(parse_strategy("maj@8:temp=0.5")).temperature == 0.5
    assert AskOptions(temperature=1.0).sampling_for(parse_strategy("maj@8:temp=0.5")).temperature == 1.0
    assert AskOptions(temperature=1.0).sampling_for(parse_strategy("maj@8")).temperature == 1.0
    assert AskOptions().sampling_for(parse_strategy("maj@8")).temperature == 0.8
    assert AskOptions().sampling_for(parse_strategy("single")).temperature == 0.0


def test_auto_samples_its_escalation_at_the_escalation_temperature() -> None:
    from edgescale.settings import AskOptions
    from edgescale.strategies.generation import generation_config
    from edgescale.strategies.spec import Escalate

    esc = Escalate(stage1=EarlyExit(k=1), escalation=Adaptive(max=4, temp=0.3), confidence=0.5)
    config = generation_config(esc, AskOptions(), 64)
    assert config.sampling.temperature == 0.3
    assert dict(config.sampling_overrides)[0].temperature == 0.0  # stage 1 stays greedy
