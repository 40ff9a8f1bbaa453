"""The OpenAI wire format: request bodies in, response and chunk objects out.

Pure functions over dicts (no HTTP stack here). A body becomes a :class:`Call`:
the prompt (chat messages or completion text), the validated
:class:`~edgescale.settings.AskSettings` and the streaming choices, with every
rule the CLI has (one validation layer, ``edgescale.settings``). Bad bodies raise
:class:`ApiError`, which carries the HTTP status and OpenAI's error shape.

Test-time compute fields (top level, what the ``openai`` client sends with
``extra_body``): ``strategy`` (a CLI spec: ``maj@8``, ``short-2@8``, ``auto``...),
``deadline_ms`` (wall clock from arrival), ``answer`` (kind), ``seed``, the
sampling extras ``top_k`` and ``min_p``, and ``ignore_eos`` (samples run to
``max_tokens`` or a stop string, as llama-server's field: for load tests). ``response_format``
is OpenAI's (``json_object``, ``json_schema``), plus edgescale's ``regex``, ``choices`` and
``grammar`` types (``runtime.constraints.response_format_constraint``); ``edgescale.valid``
says whether the output is complete and valid under it. ``n`` keeps its OpenAI meaning: n
choices sampled from one shared read of the prompt (they are the samples of a
``maj@n`` query, so the response also carries their vote).

OpenAI's ``logprobs``/``top_logprobs``/``echo``, penalties, ``logit_bias`` and
``reasoning_effort`` are read by ``serve.fields``, ``tools``/``tool_choice`` by ``serve.tools``;
informational fields (``user``, ``metadata``...) are ignored, unknown ones refused.

``finish_reason`` is ``stop`` or ``length`` as in OpenAI, ``tool_calls``, or ``deadline``: the
request's deadline hit first and the choice holds the best text (and
``edgescale.answer`` the best answer) found by then; or ``cancelled``: the server
was shutting down and the grace period ran out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from edgescale import limits
from edgescale.errors import EdgescaleError, UsageError
from edgescale.runtime.token_logprobs import TokenLogprob
from edgescale.serve.fields import Extras, default_efforts, parse_extras
from edgescale.serve.logprobs import logprobs_object
from edgescale.serve.tools import Tools, chat_message, history_message, parse_tools, with_tools
from edgescale.settings import AskSettings, ask_settings, typed_field
from edgescale.strategies.result import Result, Sample
from edgescale.strategies.spec import Majority, draws_one_sample, samples_of

FINISH_REASONS = ("stop", "length", "deadline", "cancelled")

# What our error messages call each setting: the JSON fields of the body.
NAMES = {"samples": "field 'n'", "max_tokens": "field 'max_tokens'", "temperature": "field 'temperature'",
         "seed": "field 'seed'", "top_k": "field 'top_k'", "top_p": "field 'top_p'", "min_p": "field 'min_p'",
         "answer": "field 'answer'", "response_format": "field 'response_format'",
         "frequency_penalty": "field 'frequency_penalty'", "presence_penalty": "field 'presence_penalty'",
         "logit_bias": "field 'logit_bias'", "top_logprobs": "field 'top_logprobs'"}

COMMON = ("model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
          "strategy", "deadline_ms", "answer", "top_k", "min_p", "ignore_eos", "response_format",
          "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "reasoning_effort")
# OpenAI fields accepted at their neutral value only (what many clients send by default)
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (1,), "suffix": ("",), "modalities": (["text"],), "function_call": ("none",), "functions": ([],),
}
# bookkeeping fields with no effect on the answer
IGNORED = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier")
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
               "parallel_tool_calls")
COMPLETION_FIELDS = (*COMMON, "prompt", "echo")
ROLES = ("system", "user", "assistant", "developer", "tool")


class ApiError(Exception):
    """An error response: HTTP status plus OpenAI's ``{"error": {...}}`` body."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Defaults:
    """The server's defaults for what a body leaves out (from the command line)."""

    strategy: str | None = None
    deadline_ms: int | None = None
    answer: str = "auto"
    seed: int = limits.DEFAULT_SEED
    max_tokens: int = limits.DEFAULT_MAX_TOKENS
    temperature: float | None = None
    # reasoning_effort level -> strategy spec (serve.fields; --reasoning-effort LEVEL=SPEC)
    efforts: tuple[tuple[str, str], ...] = default_efforts(16)

    def effort_strategy(self, level: str) -> str:
        return dict(self.efforts)[level]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    max_n: int = 16
    max_samples: int = 16  # samples one request may draw, by 'n' or by a strategy's k

    def samples_refusal(self, samples: int, what: str, param: str) -> ApiError | None:
        """The 400 for a request that would draw more samples than this server allows."""
        if samples <= self.max_samples:
            return None
        return _bad(f"{what} draws {samples} samples; this server allows at most {self.max_samples} per request "
                    f"(--max-samples)", param=param, code="too_many_samples")


@dataclass(frozen=True)
class Call:
    """A validated request."""

    chat: bool  # /v1/chat/completions (messages) or /v1/completions (prompt text)
    prompt: str | tuple[dict[str, str], ...]
    settings: AskSettings
    n: int
    stream: bool
    include_usage: bool
    extras: Extras = Extras()
    tools: Tools | None = None  # functions offered (serve.tools); None: none
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def object_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.id

    @property
    def streams_tokens(self) -> bool:
        """Whether text can stream token by token: one sample per choice. A voting
        strategy's text is known only when the vote is: it comes as one chunk."""
        if self.tools is not None and self.tools.choice != "none":
            return False  # a call is known only when its text is whole
        return self.n > 1 or draws_one_sample(self.settings.strategy)


def deadline_seconds(deadline_ms: int | float | None, name: str = "field 'deadline_ms'") -> float | None:
    """A deadline in milliseconds from arrival (a body's ``deadline_ms``, ``serve
    --deadline-ms``) in seconds: the one place it is read. ApiError when not positive."""
    if deadline_ms is None:
        return None
    if not deadline_ms > 0:
        raise _bad(f"{name} must be positive", param="deadline_ms")
    return deadline_ms / 1000


def defaults_of(*, strategy: str | None, deadline_ms: int | None, answer: str, seed: int,
                max_tokens: int, efforts: tuple[tuple[str, str], ...] = default_efforts(16)
                ) -> tuple[Defaults, AskSettings]:
    """The server's defaults (from its command line), checked by the rules every request
    goes through; UsageError (one line) when one is bad."""
    try:
        settings = ask_settings(strategy=strategy, max_tokens=max_tokens, seed=seed, answer=answer,
                                deadline=deadline_seconds(deadline_ms, "--deadline-ms"))
    except ApiError as exc:
        raise UsageError(exc.message) from None
    return Defaults(strategy=strategy, deadline_ms=deadline_ms, answer=settings.options.answer, seed=seed,
                    max_tokens=max_tokens, efforts=efforts), settings


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _get(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    try:
        return typed_field(body, key, kind, default)
    except UsageError as exc:
        raise _bad(str(exc), param=key) from None


def _check_fields(body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key, value in body.items():
        if key in allowed or key in IGNORED:
            continue
        if key in NEUTRAL:
            if value is None or any(value == v and type(value) is type(v) for v in NEUTRAL[key]) or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
                    and 0 in NEUTRAL[key]):
                continue
            raise _bad(f"field {key!r} is not supported by this server (leave it out)", param=key,
                       code="unsupported_parameter")
        raise _bad(f"unrecognized request argument supplied: {key}", param=key, code="unknown_parameter")


def _content(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"messages[{i}].content: only text parts are supported, got {kind!r}",
                           param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content")


def _messages(body: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("field 'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                       param=f"messages[{i}].role")
        if role == "tool" or (role == "assistant" and m.get("tool_calls") is not None):
            try:  # earlier calls and their results, written as chat text (serve.tools)
                out.append(history_message(m, i, _content(m, i)))
            except UsageError as exc:
                raise _bad(str(exc), param=f"messages[{i}]") from None
            continue
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return tuple(out)


def _completion_prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("field 'prompt' must be a string (one prompt per request)", param="prompt")
    return prompt


def parse_call(body: Any, *, chat: bool, defaults: Defaults, limits_: Limits) -> Call:
    """Validate a request body (already JSON-decoded)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    try:
        tools = parse_tools(body) if chat else None
    except UsageError as exc:
        raise _bad(str(exc), param=next(p for p in ("parallel_tool_calls", "tool_choice", "tools")
                                        if p in str(exc))) from None
    response_format = body.get("response_format")
    if tools is not None and tools.forced:
        if response_format is not None:
            raise _bad("a forced tool call ('tool_choice') holds the output to the call's schema: leave "
                       "'response_format' out", param="response_format")
        response_format = tools.constraint()
    prompt: str | tuple[dict[str, str], ...] = _messages(body) if chat else _completion_prompt(body)
    n = _get(body, "n", int, 1)
    if not 1 <= n <= limits_.max_n:
        raise _bad(f"field 'n' must be between 1 and {limits_.max_n} (--max-n), got {n}", param="n")
    refusal = limits_.samples_refusal(n, f"field 'n' = {n}", "n")
    if refusal is not None:
        raise refusal
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, key, int, defaults.max_tokens)
    if not 1 <= max_tokens <= limits_.max_tokens:
        raise _bad(f"field {key!r} must be between 1 and {limits_.max_tokens}, got {max_tokens}", param=key)
    extras = parse_extras(body, chat=chat, get=_get, bad=lambda message, param: _bad(message, param=param))
    strategy = _get(body, "strategy", str, None)
    if strategy is None and n == 1 and extras.effort is not None:  # an explicit strategy (or n) comes first
        strategy = defaults.effort_strategy(extras.effort)
    if body.get("strategy") is not None and n > 1:
        raise _bad("n > 1 asks for n samples as choices; with a 'strategy' the samples are voted into one "
                   "choice: send one of them", param="n")
    deadline_s = deadline_seconds(_get(body, "deadline_ms", (int, float), defaults.deadline_ms))
    stop = body.get("stop")
    stops: list[str] = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if stop is not None and (not isinstance(stop, (str, list)) or not all(isinstance(s, str) for s in stops)):
        raise _bad("field 'stop' must be a string or a list of strings", param="stop")
    if len(stops) > 4:
        raise _bad("field 'stop' holds at most 4 strings", param="stop")
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    try:
        settings = ask_settings(
            strategy=strategy if strategy is not None else (Majority(n) if n > 1 else defaults.strategy),
            temperature=_get(body, "temperature", (int, float), defaults.temperature),
            top_k=_get(body, "top_k", int, limits.DEFAULT_TOP_K),
            top_p=_get(body, "top_p", (int, float), limits.DEFAULT_TOP_P),
            min_p=_get(body, "min_p", (int, float), limits.DEFAULT_MIN_P),
            max_tokens=max_tokens, seed=_get(body, "seed", int, defaults.seed),
            answer=_get(body, "answer", str, defaults.answer), stop=[s for s in stops if s],
            ignore_eos=_get(body, "ignore_eos", bool, False),
            raw=not chat, deadline=deadline_s, names=NAMES, response_format=response_format,
            **extras.settings_fields(),
        )
    except EdgescaleError as exc:
        message = str(exc)
        param = next((k for k, name in NAMES.items() if name in message), None)
        param = {"samples": "n"}.get(param or "", param)
        if param is None and ("response_format" in message or "tools" in message):
            param = "tools" if "tools" in message else "response_format"
        if param is None and extras.effort is not None and body.get("strategy") is None:
            param = "reasoning_effort"
        raise _bad(message, param=param) from None
    settings = with_tools(settings, tools)
    by_effort = extras.effort is not None and body.get("strategy") is None and n == 1
    refusal = limits_.samples_refusal(samples_of(settings.strategy), f"strategy {settings.strategy.spec()!r}",
                                      "reasoning_effort" if by_effort else "strategy")
    if refusal is not None:
        raise refusal
    return Call(chat=chat, prompt=prompt, settings=settings, n=n, stream=stream,
                include_usage=bool(options.get("include_usage")), extras=extras, tools=tools)


# -- responses -----------------------------------------------------------------------------
def finish_reason(sample_reason: str | None, result: Result | None = None) -> str:
    """A sample's (or the query's) end in OpenAI's terms."""
    if result is not None and "deadline" in result.stop_reason:
        return "deadline"
    if sample_reason == "cancelled" or (result is not None and "cancelled" in result.stop_reason):
        return "cancelled"
    if sample_reason in ("length", "deadline"):
        return sample_reason
    return "stop"


class Choice(NamedTuple):
    text: str
    finish_reason: str
    sample: Sample | None  # whose tokens the text is (its logprobs); None: no sample


def choices_of(call: Call, result: Result) -> list[Choice]:
    """Each choice: the n samples, or the query's winning text."""
    if call.n > 1:
        ordered = sorted(result.samples, key=lambda s: s.index)
        return [Choice(s.text, finish_reason(s.finish_reason), s) for s in ordered]
    winner: Sample | None = next((s for s in result.samples if s.index == result.winner), None)
    if winner is None and result.samples:
        winner = result.samples[0]
    return [Choice(result.text, finish_reason(winner.finish_reason if winner else None, result), winner)]


def usage(result: Result) -> dict[str, Any]:
    s = result.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.total_tokens,
            "total_tokens": s.prompt_tokens + s.total_tokens,
            "prompt_tokens_details": {"cached_tokens": s.cached_prompt_tokens}}


def edgescale_fields(result: Result, call: Call | None = None) -> dict[str, Any]:
    """The test-time compute account of a response."""
    s = result.stats
    effort = call.extras.effort if call is not None else None
    return {
        **({"reasoning_effort": effort} if effort is not None else {}),
        "answer": result.answer, "votes": result.votes, "strategy": result.strategy,
        "stop_reason": result.stop_reason, "samples": len(result.samples), "skipped": list(result.skipped),
        "tokens_generated": s.total_tokens, "sample_tokens": s.generated_tokens, "probe_tokens": s.probe_tokens,
        "prompt_tokens_read": s.prompt_tokens - s.cached_prompt_tokens,
        "prompt_tokens_cached": s.cached_prompt_tokens,
        "wall_ms": round(s.wall_s * 1000, 1), "queue_ms": round(s.queue_s * 1000, 1),
        "plan": _plan(result), "valid": result.valid,
    }


def _plan(result: Result) -> dict[str, Any] | None:
    plan = result.to_dict().get("plan")
    return plan if isinstance(plan, dict) else None


def response(call: Call, result: Result, model: str, fingerprint: str,
             prompt: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
    """The non-streaming response object. ``prompt``: the prompt's token records (``echo``
    with ``logprobs``)."""
    choices: list[dict[str, Any]] = []
    lp = call.extras.logprobs
    for i, (text, reason, sample) in enumerate(choices_of(call, result)):
        entries = (sample.logprobs or ()) if sample is not None and lp else () if lp else None
        if call.chat:
            message, reason = chat_message(call.tools, text, reason)
            choices.append({"index": i, "message": message,
                            "logprobs": logprobs_object(True, entries, call.extras.top_logprobs),
                            "finish_reason": reason})
            continue
        head = echoed(call)
        if head and entries is not None:
            entries = (*(prompt or ()), *entries)
        choices.append({"index": i, "text": head + text, "finish_reason": reason,
                        "logprobs": logprobs_object(False, entries, call.extras.top_logprobs)})
    return {
        "id": call.object_id, "object": "chat.completion" if call.chat else "text_completion",
        "created": call.created, "model": model, "system_fingerprint": fingerprint, "choices": choices,
        "usage": usage(result), "edgescale": edgescale_fields(result, call),
    }


def echoed(call: Call) -> str:
    """The text a completion choice starts with: its prompt under ``echo``, else nothing."""
    return call.prompt if call.extras.echo and isinstance(call.prompt, str) else ""


def chunk(call: Call, model: str, fingerprint: str, choices: list[dict[str, Any]],
          **extra: Any) -> dict[str, Any]:
    """One streaming chunk; ``choices`` from :func:`delta`."""
    return {"id": call.object_id, "object": "chat.completion.chunk" if call.chat else "text_completion",
            "created": call.created, "model": model, "system_fingerprint": fingerprint, "choices": choices,
            **extra}


def delta(call: Call, index: int, text: str | None, reason: str | None = None, *, role: bool = False,
          logprobs: Sequence[TokenLogprob] | None = None, offset: int = 0) -> dict[str, Any]:
    """One choice of a chunk: new text (and its tokens' logprobs, when asked), and the finish
    reason on the last. ``offset``: the characters of the choice streamed before (completions)."""
    entries = (logprobs or ()) if call.extras.logprobs else None
    lp = logprobs_object(call.chat, entries, call.extras.top_logprobs, offset) if entries else None
    if call.chat:
        d: dict[str, Any] = {"role": "assistant"} if role else {}
        if text:
            d["content"] = text
        elif role:
            d["content"] = ""
        return {"index": index, "delta": d, "logprobs": lp, "finish_reason": reason}
    return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": reason}
