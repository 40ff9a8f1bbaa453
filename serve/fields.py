"""The OpenAI fields beyond the prompt and the sampling basics: log-probabilities, penalties,
logit bias and ``reasoning_effort``, checked into what a :class:`~edgescale.serve.protocol.Call`
carries.

``reasoning_effort`` is test-time compute: each level names a strategy (``serve
--reasoning-effort LEVEL=SPEC`` overrides one): ``low`` (and ``minimal``) one greedy sample,
``medium`` ``auto`` (one sample that escalates when its answer is unsure), ``high`` the
default policy's escalation, always, twice as wide (``conf@16:online=1,temp=0.4``, at most
``--max-samples``). The request's ``deadline_ms`` (or ``--deadline-ms``) bounds each of them;
an explicit ``strategy``, or ``n > 1``, takes precedence over the level.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from edgescale.errors import UsageError
from edgescale.settings import MAX_TOP_LOGPROBS
from edgescale.strategies.policy import DEFAULT_POLICY
from edgescale.strategies.spec import Confidence, parse_strategy

EFFORT_LEVELS = ("low", "medium", "high")
EFFORT_ALIASES = {"minimal": "low"}
COMPLETION_MAX_LOGPROBS = 5  # OpenAI's bound on /v1/completions' integer logprobs


def default_efforts(max_samples: int) -> tuple[tuple[str, str], ...]:
    """low: single; medium: auto; high: the default policy's escalation at twice its width (samples
    and warm-up), always, and without its give-up rule (high effort spends even where answers spread)."""
    esc = DEFAULT_POLICY.escalation
    base = esc if isinstance(esc, Confidence) else Confidence(online=True, temp=0.4)
    k = max(1, min(2 * base.k, max_samples))
    high = replace(base, k=k, warmup=min(k, 2 * base.warmup), give_up=0.0)
    return (("low", "single"), ("medium", "auto"), ("high", high.spec()))


def parse_efforts(items: Sequence[str], max_samples: int) -> tuple[tuple[str, str], ...]:
    """``LEVEL=SPEC`` flags over the defaults; UsageError (one line) on a bad one."""
    table = dict(default_efforts(max_samples))
    for item in items:
        level, eq, spec = item.partition("=")
        level = EFFORT_ALIASES.get(level.strip().lower(), level.strip().lower())
        if not eq or level not in EFFORT_LEVELS:
            raise UsageError(f"--reasoning-effort takes LEVEL=STRATEGY with LEVEL one of "
                             f"{', '.join(EFFORT_LEVELS)}, got {item!r}")
        parse_strategy(spec.strip())  # a bad spec fails here, before the model loads
        table[level] = spec.strip()
    return tuple(table.items())


@dataclass(frozen=True)
class Extras:
    """What the body asked for besides the prompt and the basic sampling fields."""

    logprobs: bool = False
    top_logprobs: int = 0
    echo: bool = False  # /v1/completions: the prompt comes before the text (with its logprobs, if asked)
    effort: str | None = None  # the reasoning_effort level asked for (aliases resolved)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Any = None

    def settings_fields(self) -> dict[str, Any]:
        """``ask_settings`` keywords."""
        return {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                "logit_bias": self.logit_bias, "top_logprobs": self.top_logprobs, "logprobs": self.logprobs}


Getter = Callable[[Mapping[str, Any], str, "type | tuple[type, ...]", Any], Any]


def parse_extras(body: Mapping[str, Any], *, chat: bool, get: Getter,
                 bad: Callable[[str, str], Exception]) -> Extras:
    """The fields of :class:`Extras` from a body; ``get`` reads a typed field, ``bad(message,
    param)`` makes the 400."""
    if chat:
        logprobs = bool(get(body, "logprobs", bool, False))
        top = get(body, "top_logprobs", int, 0)
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad(f"field 'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
        if top and not logprobs:
            raise bad("field 'top_logprobs' needs 'logprobs': true", "top_logprobs")
        echo = False
    else:
        raw = body.get("logprobs")
        if isinstance(raw, bool):  # a chat-style boolean sent to completions: false is no logprobs
            raw = 0 if raw else None
        top = get({"logprobs": raw}, "logprobs", int, None)
        if top is not None and not 0 <= top <= COMPLETION_MAX_LOGPROBS:
            raise bad(f"field 'logprobs' must be between 0 and {COMPLETION_MAX_LOGPROBS}, got {top}", "logprobs")
        logprobs, top = top is not None, top or 0
        echo = bool(get(body, "echo", bool, False))
    effort = get(body, "reasoning_effort", str, None)
    if effort is not None:
        level = EFFORT_ALIASES.get(effort, effort)
        if level not in EFFORT_LEVELS:
            raise bad(f"field 'reasoning_effort' must be one of minimal, {', '.join(EFFORT_LEVELS)}, got {effort!r}",
                      "reasoning_effort")
        effort = level
    bias = get(body, "logit_bias", dict, None)
    return Extras(logprobs=logprobs, top_logprobs=top, echo=echo, effort=effort,
                  frequency_penalty=get(body, "frequency_penalty", (int, float), 0.0),
                  presence_penalty=get(body, "presence_penalty", (int, float), 0.0), logit_bias=bias)
