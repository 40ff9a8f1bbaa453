"""Strategy spec strings: one syntax for the CLI and the API.

    single                      one sample (greedy by default)
    maj@8[:vote=count|conf|fields,temp=T]  self-consistency: 8 samples, majority vote
    ffs@8[:rule=answered|any]   first finish search: first finished sample wins
    short-3@8[:rule=answered|any]  stop when 3 of 8 have finished, vote among them
    best@8                      8 samples, highest self-certainty answer wins
    conf@8[:keep=0.9,window=16,topk=5,online=0|1,warmup=4,consensus=0.95,give_up=0,temp=T]
                                DeepConf: votes weighted by trace confidence (strategies/confidence.py)
    adaptive[:max=16,conf=0.8,wave=2,rule=beta|esc,window=4,vote=count|conf,refill=lazy|eager,temp=0.4,give_up=0.5]
    early-exit[:every=32,window=2,k=1,probe=20]
    auto[:policy=NAME]          the planner picks, by the default policy or one `edgescale tune` fitted

``@k`` may be left out (``ffs``, ``maj``); the caller's default k is used then.
``rule`` of ffs and short-m@k: ``answered`` (the default) counts only finished samples
whose answer can be extracted as finishers; ``any`` is the papers' rule (every sample
that stops finishes). ``maj@8:vote=conf`` and ``adaptive:...,vote=conf`` decide by
DeepConf's confidence-weighted vote instead of counting; ``maj@8:vote=fields`` (JSON
answers) gives each top-level field its own majority. ``temp`` (maj, conf,
adaptive: ``maj@8:temp=0.5``) is the samples' temperature, in (0, 2], so strategies at
different temperatures compare in one run; ``--temperature``, when given, overrides it;
unset, the multi-sample default (0.8) applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Union

from edgescale import limits
from edgescale.errors import InvalidSpec, UsageError

VALID_FORMS = (
    "single, maj@K[:vote=count|conf|fields,temp=T], ffs@K[:rule=answered|any], short-M@K[:rule=answered|any], best@K, "
    "conf@K[:keep=0.9,window=16,topk=5,online=0|1,warmup=4,consensus=0.95,give_up=0,temp=T], "
    "adaptive[:max=16,conf=0.8,wave=2,rule=beta|esc,window=4,vote=count|conf,refill=lazy|eager,temp=0.4,give_up=0.5], "
    "early-exit[:every=32,window=2,k=1,probe=20], auto[:policy=NAME]"
)
MAX_SAMPLES = limits.MAX_SAMPLES
FINISH_RULES = ("answered", "any")  # who counts as a finisher in ffs / short-m@k


VOTES = ("count", "conf")  # how samples' answers are tallied: one vote each, or DeepConf's weights


def _rule_suffix(rule: str) -> str:
    return "" if rule == "answered" else f":rule={rule}"


@dataclass(frozen=True)
class Single:
    name = "single"

    def spec(self) -> str:
        return "single"


@dataclass(frozen=True)
class Majority:
    k: int = 8
    vote: str = "count"  # or "conf": DeepConf's weighted vote with the default settings
    temp: float | None = None  # the samples' temperature (None: the option's)
    name = "maj"

    def spec(self) -> str:
        params = ([] if self.vote == "count" else [f"vote={self.vote}"]) + _temp(self.temp)
        return f"maj@{self.k}" + (":" + ",".join(params) if params else "")


@dataclass(frozen=True)
class FirstFinish:
    k: int = 8
    rule: str = "answered"  # or "any": the paper's rule
    name = "ffs"

    def spec(self) -> str:
        return f"ffs@{self.k}{_rule_suffix(self.rule)}"


@dataclass(frozen=True)
class ShortM:
    m: int = 3
    k: int = 8
    rule: str = "answered"  # or "any": the paper's rule
    name = "short"

    def spec(self) -> str:
        return f"short-{self.m}@{self.k}{_rule_suffix(self.rule)}"


@dataclass(frozen=True)
class BestOfK:
    k: int = 8
    name = "best"

    def spec(self) -> str:
        return f"best@{self.k}"


@dataclass(frozen=True)
class Adaptive:
    """Adaptive sampling (strategies/adaptive.py). The defaults are the ones measured to save
    (docs/BENCHMARKS.md, "Why adaptive did not save"): Beta rule at 0.8 (two agreeing answers
    stop), waves of 2 refilled lazily, samples at temperature 0.4. Before: conf 0.95, wave
    4, eager refill, temperature 0.8 (``adaptive:conf=0.95,wave=4,refill=eager,temp=0.8``)."""

    max: int = 16
    conf: float = 0.8
    wave: int = 2
    rule: str = "beta"
    window: int = 4
    vote: str = "count"  # the final decision: counted, or DeepConf's weighted vote ("conf")
    refill: str = "lazy"  # when a finished sample is replaced: at once ("eager"), or "lazy" (strategies/adaptive.py)
    temp: float = 0.4  # the samples' temperature (--temperature, when given, overrides it)
    # stop when the Beta rule's chance to fire within the samples left is below this
    # (strategies/voting.py reach_probability; 0: never give up; the Beta rule only)
    give_up: float = 0.5
    name = "adaptive"

    def spec(self) -> str:
        return (
            f"adaptive:max={self.max},conf={self.conf:g},wave={self.wave},rule={self.rule},"
            f"window={self.window}" + ("" if self.vote == "count" else f",vote={self.vote}")
            + f",refill={self.refill},temp={self.temp:g},give_up={self.give_up:g}"
        )


@dataclass(frozen=True)
class Confidence:
    """``conf@k``: DeepConf, offline or online (strategies/confidence.py). Its defaults are
    also the settings of ``maj@k:vote=conf`` and ``adaptive:...,vote=conf``."""

    k: int = 8
    keep: float = 0.9  # share of the answered traces that vote (the most confident)
    window: int = 16  # tokens per group confidence
    topk: int = 5  # candidates per token confidence
    online: bool = False
    warmup: int = 4  # online: samples that run to their end first and set the threshold
    consensus: float = 0.95  # online: the weighted share of the leading answer that stops the query
    temp: float | None = None  # the samples' temperature (None: the option's)
    # online: after the warm-up, stop when its distinct answers are at least this share of its
    # answered samples (the answers spread: more samples would not make a consensus); 0: never
    give_up: float = 0.0
    name = "conf"

    def spec(self) -> str:
        params = [f"{f}={_fmt(getattr(self, f))}" for f in ("keep", "window", "topk", "online", "warmup", "consensus",
                                                            "give_up")
                  if getattr(self, f) != getattr(Confidence, f)] + _temp(self.temp)
        return f"conf@{self.k}" + (":" + ",".join(params) if params else "")


def _temp(temp: float | None) -> list[str]:
    return [] if temp is None else [f"temp={temp:g}"]


def _fmt(value: object) -> str:
    return str(int(value)) if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class EarlyExit:
    every: int = 32
    window: int = 2
    k: int = 1
    probe: int = 20
    name = "early-exit"

    def spec(self) -> str:
        return f"early-exit:every={self.every},window={self.window},k={self.k},probe={self.probe}"


@dataclass(frozen=True)
class Auto:
    """auto as asked for: the planner turns it into an :class:`Escalate`. ``policy``: the
    task name of a tuned policy (``auto:policy=NAME``; None: the runtime's policy)."""

    policy: str | None = None
    name = "auto"

    def spec(self) -> str:
        return "auto" if self.policy is None else f"auto:policy={self.policy}"


@dataclass(frozen=True)
class Escalate:
    """auto as planned: stage 1 (one early-exit sample); when its answer is less certain
    than ``confidence`` and the probes did not agree, ``escalation`` in the same batch."""

    stage1: EarlyExit
    escalation: Escalation | None
    confidence: float
    name = "auto"

    def spec(self) -> str:
        return "auto"


Escalation = Union[Adaptive, Confidence]  # what auto's stage 2 may run
Strategy = Union[Single, Majority, FirstFinish, ShortM, BestOfK, Adaptive, EarlyExit, Confidence, Auto, Escalate]


def confidence_of(strategy: Strategy) -> Confidence | None:
    """The DeepConf settings a strategy decides with (None: it counts votes)."""
    if isinstance(strategy, Confidence):
        return strategy
    if isinstance(strategy, (Majority, Adaptive)) and strategy.vote == "conf":
        return Confidence()
    if isinstance(strategy, Escalate) and strategy.escalation is not None:
        return confidence_of(strategy.escalation)
    return None


def spec_temperature(strategy: Strategy) -> float | None:
    """The temperature a strategy's spec sets for its samples (auto: its escalation's), if any."""
    if isinstance(strategy, Escalate):
        return strategy.escalation.temp if strategy.escalation is not None else None
    return strategy.temp if isinstance(strategy, (Majority, Adaptive, Confidence)) else None


def first_wave(strategy: Escalation) -> int:
    """How many samples an escalation starts with: adaptive's wave, online DeepConf's
    warm-up, offline DeepConf's k."""
    if isinstance(strategy, Adaptive):
        return min(strategy.wave, strategy.max)
    return min(strategy.warmup, strategy.k) if strategy.online else strategy.k


def with_first_wave(strategy: Escalation, width: int) -> Escalation:
    """The escalation starting ``width`` samples at once (adaptive's wave, online DeepConf's
    warm-up; offline DeepConf runs all its samples at once and is returned as it is)."""
    if isinstance(strategy, Adaptive):
        return replace(strategy, wave=width)
    return replace(strategy, warmup=width) if strategy.online else strategy


def draws_one_sample(strategy: Strategy) -> bool:
    """Whether the strategy's samples are one (greedy by default) rather than several."""
    if isinstance(strategy, Single):
        return True
    return isinstance(strategy, (Majority, FirstFinish, ShortM, BestOfK, EarlyExit, Confidence)) and strategy.k == 1

_AT_K = re.compile(r"^(maj|majority|ffs|best|sc|conf)(?:@(\d+))?$")
_SHORT = re.compile(r"^short-(\d+)(?:@(\d+))?$")
_PARAM_TYPES: dict[str, dict[str, type]] = {
    "adaptive": {"max": int, "conf": float, "wave": int, "rule": str, "window": int, "vote": str,
                 "refill": str, "temp": float, "give_up": float},
    "early-exit": {"every": int, "window": int, "k": int, "probe": int},
}
_FINISH_PARAM_TYPES: dict[str, type] = {"rule": str}
_VOTE_PARAM_TYPES: dict[str, type] = {"vote": str, "temp": float}
_CONF_PARAM_TYPES: dict[str, type] = {"keep": float, "window": int, "topk": int, "online": int, "warmup": int,
                                      "consensus": float, "temp": float, "give_up": float}


def _fail(spec: str, why: str) -> InvalidSpec:
    return InvalidSpec(f"bad strategy {spec!r}: {why}; valid forms: {VALID_FORMS}")


def _count(spec: str, raw: str | None, default: int, what: str) -> int:
    value = default if raw is None else int(raw)
    if not 1 <= value <= MAX_SAMPLES:
        raise _fail(spec, f"{what} must be between 1 and {MAX_SAMPLES}")
    return value


def _params(spec: str, types: dict[str, type], text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise _fail(spec, f"unknown parameter {part!r} (known: {', '.join(types)})")
        try:
            out[key] = types[key](value.strip())
        except ValueError:
            raise _fail(spec, f"{key} must be a {types[key].__name__}") from None
    return out


def _vote(spec: str, vote: str, *, fields: bool = False) -> str:
    allowed = (*VOTES, "fields") if fields else VOTES
    if vote not in allowed:
        raise _fail(spec, f"vote must be {' or '.join(allowed)}")
    return vote


def _check_temp(spec: str, temp: float | None) -> float | None:
    if temp is not None and not 0 < temp <= 2:
        raise _fail(spec, "temp must be in (0, 2]")
    return temp


def _check_confidence(spec: str, s: Confidence) -> Confidence:
    _check_temp(spec, s.temp)
    if not 0 < s.keep <= 1:
        raise _fail(spec, "keep must be in (0, 1]")
    if not 1 <= s.window <= 4096 or not 1 <= s.topk <= 1000:
        raise _fail(spec, "window must be 1..4096 and topk 1..1000")
    if s.online not in (0, 1) or not 1 <= s.warmup <= s.k:
        raise _fail(spec, "online must be 0 or 1, warmup between 1 and k")
    if not 0.5 <= s.consensus <= 1:
        raise _fail(spec, "consensus must be in [0.5, 1]")
    if not 0 <= s.give_up <= 1 or (s.give_up and not s.online):
        raise _fail(spec, "give_up must be in [0, 1], and needs online=1")
    return replace(s, online=bool(s.online))


def _check_adaptive(spec: str, s: Adaptive) -> Adaptive:
    _vote(spec, s.vote)
    _check_temp(spec, s.temp)
    if s.refill not in ("eager", "lazy"):
        raise _fail(spec, "refill must be eager or lazy")
    if not 1 <= s.max <= MAX_SAMPLES:
        raise _fail(spec, f"max must be between 1 and {MAX_SAMPLES}")
    if not 0.5 <= s.conf < 1.0:
        raise _fail(spec, "conf must be in [0.5, 1)")
    if s.rule not in ("beta", "esc"):
        raise _fail(spec, "rule must be beta or esc")
    if not 1 <= s.wave <= s.max or not 1 <= s.window <= s.max:
        raise _fail(spec, "wave and window must be between 1 and max")
    if not 0 <= s.give_up < 1:
        raise _fail(spec, "give_up must be in [0, 1)")
    return s


def _check_early_exit(spec: str, s: EarlyExit) -> EarlyExit:
    if not 4 <= s.every <= 4096:
        raise _fail(spec, "every must be between 4 and 4096 tokens")
    if not 1 <= s.window <= 16 or not 1 <= s.probe <= 128:
        raise _fail(spec, "window must be 1..16 and probe 1..128")
    if not 1 <= s.k <= MAX_SAMPLES:
        raise _fail(spec, f"k must be between 1 and {MAX_SAMPLES}")
    return s


def _finish_rule(spec: str, tail: str) -> str:
    rule = _params(spec, _FINISH_PARAM_TYPES, tail).get("rule", "answered")
    if rule not in FINISH_RULES:
        raise _fail(spec, f"rule must be {' or '.join(FINISH_RULES)}")
    return str(rule)


_POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(task: str) -> str:
    """A tuned policy's task name (``auto:policy=NAME``, ``edgescale tune --task NAME``)."""
    if not _POLICY_NAME.match(task):
        raise UsageError(f"bad policy / task name {task!r}: lower-case letters, digits, '.', '_' and '-', "
                         "at most 64")
    return task


def _auto(spec: str, tail: str) -> Auto:
    key, _, value = tail.partition("=")
    if key.strip() != "policy" or not value.strip():
        raise _fail(spec, "auto takes one parameter: auto:policy=NAME (a task tuned by `edgescale tune`)")
    return Auto(policy=check_name(value.strip()))


def parse_strategy(spec: str, *, default_k: int = limits.DEFAULT_K) -> Strategy:
    """Parse a spec string; raise InvalidSpec (one line, naming the valid forms) if it is bad."""
    if not isinstance(spec, str):
        raise _fail(repr(spec), "not a string")
    text = spec.strip().lower()
    head, _, tail = text.partition(":")
    head = head.strip()
    try:
        if head in ("single", "greedy") and not tail:
            return Single()
        if head == "auto":
            return Auto() if not tail else _auto(spec, tail)
        m = _AT_K.match(head)
        if m and (not tail or m.group(1) in ("ffs", "maj", "majority", "sc", "conf")):
            k = _count(spec, m.group(2), default_k, "k")
            kind = m.group(1)
            if kind in ("maj", "majority", "sc"):
                params = _params(spec, _VOTE_PARAM_TYPES, tail)
                return Majority(k, vote=_vote(spec, params.get("vote", "count"), fields=True),
                                temp=_check_temp(spec, params.get("temp")))
            if kind == "conf":
                params = {"warmup": min(Confidence.warmup, k), **_params(spec, _CONF_PARAM_TYPES, tail)}
                return _check_confidence(spec, Confidence(k, **params))
            if kind == "ffs":
                return FirstFinish(k, rule=_finish_rule(spec, tail))
            return BestOfK(k)
        m = _SHORT.match(head)
        if m:
            mm = _count(spec, m.group(1), 1, "m")
            k = _count(spec, m.group(2), default_k, "k")
            if mm > k:
                raise _fail(spec, "m must not exceed k")
            return ShortM(mm, k, rule=_finish_rule(spec, tail))
        if head in _PARAM_TYPES:
            params = _params(spec, _PARAM_TYPES[head], tail)
            if head == "adaptive":
                return _check_adaptive(spec, Adaptive(**params))
            return _check_early_exit(spec, EarlyExit(**params))
    except OverflowError:
        raise _fail(spec, "number too large") from None
    raise _fail(spec, "unknown strategy")


def samples_of(strategy: Strategy) -> int:
    """How many samples a strategy draws at most."""
    if isinstance(strategy, Adaptive):
        return strategy.max
    if isinstance(strategy, (Majority, FirstFinish, ShortM, BestOfK, EarlyExit, Confidence)):
        return strategy.k
    return 1


def with_samples(strategy: Strategy, k: int) -> Strategy:
    """The same strategy drawing k samples (an adaptive one's waves and window capped at k)."""
    if isinstance(strategy, ShortM):
        return replace(strategy, m=min(strategy.m, k), k=k)
    if isinstance(strategy, Adaptive):
        return replace(strategy, max=k, wave=min(strategy.wave, k), window=min(strategy.window, k))
    if isinstance(strategy, (Majority, FirstFinish, BestOfK, EarlyExit)):
        return replace(strategy, k=k)
    if isinstance(strategy, Confidence):
        return replace(strategy, k=k, warmup=min(strategy.warmup, k))
    return strategy
