"""What a query asks for, validated once: the one boundary every front end goes through.

``ask_settings`` takes the values of CLI flags; ``settings_from_record`` a JSON
object (a batch line, later a server request body) over defaults. Both check
every field against ``edgescale.limits`` and raise ``UsageError`` with one
line; what they return (:class:`AskSettings`: the strategy, the budget and the
generation options) is trusted from there on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from edgescale import limits
from edgescale.answers.structured import TAIL_KINDS, answer_tail
from edgescale.errors import UsageError
from edgescale.runtime.constraints import Constraint, response_format_constraint
from edgescale.strategies.generation import GenerationOptions
from edgescale.strategies.planner import Budget
from edgescale.strategies.spec import (
    Auto,
    Majority,
    Single,
    Strategy,
    parse_strategy,
)

ANSWER_KINDS = ("auto", "number", "choice", "yesno", "text", "json")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|sec|m|min)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class AskOptions(GenerationOptions):
    """Per-query options (validated by ``ask_settings``): how samples are drawn
    (:class:`~edgescale.strategies.generation.GenerationOptions`), how the prompt is
    formatted and what kind of answer is extracted."""

    system: str | None = None
    chat: bool = True
    answer: str = "auto"
    choices: tuple[str, ...] = ()
    # functions offered (JSON text of OpenAI's ``tools`` list), for a chat template that reads them,
    # and the text that offers them in a system message where it does not (runtime.prompt_format)
    tools: str = ""
    tools_prompt: str = ""


@dataclass(frozen=True)
class AskSettings:
    strategy: Strategy
    budget: Budget
    options: AskOptions

    @property
    def streams(self) -> bool:
        return isinstance(self.strategy, Single)


def decode_utf8(raw: bytes, where: str) -> str:
    """Input bytes as text; anything but UTF-8 is a usage error naming the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise UsageError(f"{where} is not UTF-8 text (byte 0x{bad} at offset {exc.start})") from None


def parse_duration(text: str | float | None) -> float | None:
    """'2s', '500ms', '1.5', '1m' (or a number of seconds) -> seconds."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise UsageError(f"bad duration {text!r}; use e.g. 2s, 500ms, 1.5")
        value = float(m.group(1))
        unit = (m.group(2) or "s").lower()
        seconds = value / 1000 if unit == "ms" else value * 60 if unit in ("m", "min") else value
    if not seconds > 0:
        raise UsageError("the deadline must be positive")
    return seconds


def parse_size(text: str | int | None) -> int | None:
    """'512MB', '1GB', '300M', '2GiB' (or a number of bytes) -> bytes (K/M/G/T are powers of 1024)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise UsageError(f"bad memory size {text!r}; use e.g. 512MB, 1GB")
        unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
        scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
        size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise UsageError("the memory budget must be positive")
    return size


def parse_lanes(text: str, name: str = "--parallel") -> int | Literal["auto"]:
    """Queries in flight at once: a count from 1 to ``limits.MAX_PARALLEL``, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a number or auto, got {text!r}") from None
    if not 1 <= n <= limits.MAX_PARALLEL:
        raise UsageError(f"{name} must be between 1 and {limits.MAX_PARALLEL}, got {n}")
    return n


def resolve_strategy(spec: str | Strategy | None, samples: int | None, *, budgeted: bool) -> Strategy:
    """No spec: k alone means maj@k; a budget alone means auto; nothing means single."""
    if not isinstance(spec, str) and spec is not None:
        return spec
    if spec is None or not spec.strip():
        if samples is not None and samples > 1:
            return Majority(samples)
        return Auto() if budgeted and samples is None else Single()
    return parse_strategy(spec, default_k=samples or limits.DEFAULT_K)


# What each value is called where it came from (the rules are the same everywhere).
API_NAMES = {k: k for k in ("samples", "max_tokens", "temperature", "seed", "top_k", "top_p", "min_p", "answer",
                            "frequency_penalty", "presence_penalty", "logit_bias", "top_logprobs")}
CLI_NAMES = {"response_format": "--json-schema/--regex/--choices/--grammar",
             "samples": "--samples", "max_tokens": "--max-tokens", "temperature": "--temperature",
             "seed": "--seed", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p", "answer": "--answer",
             "frequency_penalty": "--frequency-penalty", "presence_penalty": "--presence-penalty",
             "logit_bias": "--logit-bias", "top_logprobs": "--top-logprobs"}
RECORD_NAMES = {**{k: f"field {k!r}" for k in (*API_NAMES, "response_format")}, "samples": "field 'k'"}
MAX_PENALTY = 2.0  # OpenAI's range for frequency_penalty and presence_penalty: [-2, 2]
MAX_BIAS = 100.0  # and for a logit_bias value: [-100, 100]
MAX_TOP_LOGPROBS = 20


def logit_bias_pairs(value: Any, name: str = "logit_bias") -> tuple[tuple[int, float], ...]:
    """A ``logit_bias`` as sorted (token id, bias) pairs: a mapping (OpenAI's JSON object, its keys
    token ids as strings), pairs, or the CLI's ``ID=BIAS,ID=BIAS``. UsageError naming ``name``."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[tuple[Any, Any]] = []
        for part in (p.strip() for p in value.split(",")):
            key, eq, bias = part.partition("=")
            if not eq:
                raise UsageError(f"{name} takes TOKEN_ID=BIAS pairs separated by commas, got {part!r}")
            items.append((key.strip(), bias.strip()))
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        items = [(k, b) for k, b in value]
    else:
        raise UsageError(f"{name} must map token ids to biases")
    out: dict[int, float] = {}
    for key, bias in items:
        try:
            token = int(key) if not isinstance(key, (bool, float)) else -1
            b = float(bias) if not isinstance(bias, bool) else float("nan")
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {key!r}: {bias!r} is not a token id and a number") from None
        if token < 0:
            raise UsageError(f"{name}: {key!r} is not a token id")
        if not -MAX_BIAS <= b <= MAX_BIAS:
            raise UsageError(f"{name}: the bias of token {token} must be between -100 and 100, got {bias!r}")
        out[token] = b
    return tuple(sorted(out.items()))


def sampling_extras(names: Mapping[str, str], *, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                    logit_bias: Any = None, top_logprobs: int = 0, logprobs: bool = False) -> dict[str, Any]:
    """Penalties, logit bias and logprobs checked: GenerationOptions fields."""
    _check_range(names["frequency_penalty"], frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
    _check_range(names["presence_penalty"], presence_penalty, -MAX_PENALTY, MAX_PENALTY)
    _check_range(names["top_logprobs"], top_logprobs, 0, MAX_TOP_LOGPROBS)
    return {"frequency_penalty": float(frequency_penalty), "presence_penalty": float(presence_penalty),
            "logit_bias": logit_bias_pairs(logit_bias, names["logit_bias"]), "top_logprobs": int(top_logprobs),
            "logprobs": bool(logprobs or top_logprobs)}


def _check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is not None and not lo <= value <= hi:
        raise UsageError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")


def ask_settings(
    *,
    strategy: str | Strategy | None = None,
    samples: int | None = None,
    temperature: float | None = None,
    top_k: int = limits.DEFAULT_TOP_K,
    top_p: float = limits.DEFAULT_TOP_P,
    min_p: float = limits.DEFAULT_MIN_P,
    max_tokens: int = limits.DEFAULT_MAX_TOKENS,
    seed: int = limits.DEFAULT_SEED,
    answer: str = "auto",
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    system: str | None = None,
    raw: bool = False,
    deadline: str | float | None = None,
    memory: str | int | None = None,
    choices: Sequence[str] = (),
    response_format: Any = None,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    logit_bias: Any = None,
    top_logprobs: int = 0,
    logprobs: bool = False,
    names: Mapping[str, str] = API_NAMES,
) -> AskSettings:
    """Validate every value and build the API objects. ``names``: what the values are
    called in the error messages (CLI flags, JSON fields or API arguments)."""
    _check_range(names["samples"], samples, 1, limits.MAX_SAMPLES)
    _check_range(names["max_tokens"], max_tokens, 1, limits.MAX_NEW_TOKENS)
    _check_range(names["temperature"], temperature, 0.0, limits.MAX_TEMPERATURE)
    _check_range(names["seed"], seed, 0, limits.MAX_SEED)
    _check_range(names["top_k"], top_k, 0, 1 << 30)
    _check_range(names["min_p"], min_p, 0.0, 1.0)
    if not 0.0 < top_p <= 1.0:
        raise UsageError(f"{names['top_p']} must be greater than 0 and at most 1, got {top_p:g}")
    kind, constraint, tail = answer_settings(answer, choices, response_format, names)
    options = AskOptions(
        max_tokens=int(max_tokens), temperature=temperature, top_k=int(top_k), top_p=top_p, min_p=min_p,
        seed=int(seed), stop=tuple(stop), ignore_eos=bool(ignore_eos), system=system, chat=not raw, answer=kind,
        choices=tuple(choices), constraint=constraint, tail=tail,
        **sampling_extras(names, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                          logit_bias=logit_bias, top_logprobs=top_logprobs, logprobs=logprobs),
    )
    budget = Budget(deadline_s=parse_duration(deadline), memory_bytes=parse_size(memory))
    budgeted = budget.deadline_s is not None or budget.memory_bytes is not None
    return AskSettings(resolve_strategy(strategy, samples, budgeted=budgeted), budget, options)


def answer_settings(answer: str, choices: Sequence[str], response_format: Any,
                    names: Mapping[str, str]) -> tuple[str, Constraint | None, Any]:
    """The answer kind, the output constraint and the answer tail. ``answer`` is a kind,
    optionally with its mode: ``number:tail`` (free reasoning, then a constrained answer) or
    ``number:free``. A JSON constraint makes the kind ``json`` unless one is given."""
    kind, _, mode = answer.strip().lower().partition(":")
    if kind not in ANSWER_KINDS or mode not in ("", "free", "tail"):
        raise UsageError(f"bad {names['answer']} {answer!r}; choose one of: {', '.join(ANSWER_KINDS)}, "
                         f"optionally with :tail ({', '.join(k + ':tail' for k in TAIL_KINDS)})")
    constraint = response_format_constraint(response_format, names.get("response_format", "response_format"))
    if constraint is not None and constraint.is_json and kind == "auto":
        kind = "json"
    if mode != "tail":
        return kind, constraint, None
    if kind not in TAIL_KINDS:
        raise UsageError(f"{names['answer']} {answer!r}: an answer tail needs the kind number, choice or yesno")
    if constraint is not None:
        raise UsageError(f"{names['answer']} {answer!r}: an answer tail and an output constraint cannot be combined")
    return kind, None, answer_tail(kind, choices)


# -- JSON records: a batch line or a request body over defaults --------------------------
RECORD_FIELDS = ("id", "prompt", "question", "strategy", "k", "max_tokens", "temperature", "seed", "answer",
                 "choices", "stop", "system", "deadline", "response_format", "frequency_penalty",
                 "presence_penalty", "logit_bias")


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list",
               dict: "an object"}


def typed_field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``record[key]`` when present and not null, checked to be of ``kind`` (a JSON
    boolean is no number); ``default`` otherwise. UsageError naming the field."""
    value = record.get(key)
    if value is None:
        return default
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        kinds = (kind,) if isinstance(kind, type) else kind
        want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise UsageError(f"field {key!r} must be {want}")
    return value


def _strings(record: Mapping[str, Any], key: str) -> list[str]:
    value = typed_field(record, key, (list, str), [])
    items = [value] if isinstance(value, str) else value
    if not all(isinstance(x, str) for x in items):
        raise UsageError(f"field {key!r} must hold strings")
    return items


def settings_from_record(record: Mapping[str, Any], defaults: Mapping[str, Any]) -> AskSettings:
    """A JSON object's fields over ``defaults`` (``ask_settings`` keyword arguments)."""
    unknown = sorted(set(record) - set(RECORD_FIELDS))
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(unknown)}")
    fields = dict(defaults)
    fields["strategy"] = typed_field(record, "strategy", str, defaults.get("strategy"))
    fields["samples"] = typed_field(record, "k", int, defaults.get("samples"))
    fields["max_tokens"] = typed_field(record, "max_tokens", int, defaults.get("max_tokens", limits.DEFAULT_MAX_TOKENS))
    fields["temperature"] = typed_field(record, "temperature", (int, float), defaults.get("temperature"))
    fields["seed"] = typed_field(record, "seed", int, defaults.get("seed", limits.DEFAULT_SEED))
    fields["answer"] = typed_field(record, "answer", str, defaults.get("answer", "auto"))
    fields["system"] = typed_field(record, "system", str, defaults.get("system"))
    fields["deadline"] = typed_field(record, "deadline", (str, int, float), defaults.get("deadline"))
    if "stop" in record:
        fields["stop"] = _strings(record, "stop")
    if "choices" in record:
        fields["choices"] = _strings(record, "choices")
    for key in ("frequency_penalty", "presence_penalty"):
        fields[key] = typed_field(record, key, (int, float), defaults.get(key, 0.0))
    fields["logit_bias"] = typed_field(record, "logit_bias", dict, defaults.get("logit_bias"))
    if record.get("response_format") is not None:
        fields["response_format"] = typed_field(record, "response_format", (dict, str), None)
    fields["names"] = RECORD_NAMES
    return ask_settings(**fields)


def record_prompt(record: Mapping[str, Any]) -> str:
    prompt = record.get("prompt", record.get("question"))
    if not isinstance(prompt, str):
        raise UsageError('needs a string "prompt"')
    return prompt


def overrides_of(options: AskOptions | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """AskOptions fields given as keywords, with ``answer`` (a kind, maybe ``:tail``) and
    ``response_format`` turned into the answer kind, the constraint and the tail."""
    out = dict(overrides)
    base = options or AskOptions()
    extras = ("frequency_penalty", "presence_penalty", "logit_bias", "top_logprobs", "logprobs")
    if any(k in out for k in extras):
        out.update(sampling_extras(API_NAMES, **{k: out.get(k, getattr(base, k)) for k in extras}))
    if "answer" not in overrides and "response_format" not in overrides:
        return out
    answer = out.pop("answer", base.answer)
    kind, constraint, tail = answer_settings(answer, out.get("choices", base.choices),
                                             out.pop("response_format", base.constraint), API_NAMES)
    return {**out, "answer": kind, "constraint": constraint, "tail": tail if tail is not None else base.tail}

