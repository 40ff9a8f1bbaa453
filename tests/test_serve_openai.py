"""OpenAI compatibility, completed: logprobs, penalties, logit_bias, tools and reasoning_effort,
driven through the `openai` client against one real `edgescale serve` on the packaged model."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import httpx
import pytest

pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from openai import BadRequestError, OpenAI  # noqa: E402

from tests.serve_harness import ServerProcess  # noqa: E402

MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
HIGH = "conf@6:online=1,temp=0.4"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # medium keeps its default (auto); high is overridden (the default, conf@16, is tested without a server)
    srv = ServerProcess(["--threads", "2", "--parallel", "4", "--reasoning-effort", f"high={HIGH}"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


# -- logprobs -------------------------------------------------------------------------------------
def test_chat_logprobs_and_top_logprobs(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode(errors="replace") == t.token
        tops = [a.logprob for a in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and t.logprob <= tops[0] + 1e-6
        assert math.fsum(math.exp(x) for x in tops) <= 1 + 1e-6
    # greedy: the sampled token is the most likely one
    assert all(t.token == t.top_logprobs[0].token for t in content)
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


def test_streamed_chat_logprobs_match_the_plain_ones(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, logprobs=True, top_logprobs=2)
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, logprobs=True,
                                                 top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in whole.choices[0].logprobs.content]
    assert [len(t.top_logprobs) for t in streamed] == [2] * len(streamed)


def test_each_of_n_choices_carries_its_own_logprobs(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, n=3, temperature=1.0, seed=3,
                                       logprobs=True)
    assert len(r.choices) == 3
    for c in r.choices:
        assert "".join(t.token for t in c.logprobs.content) == c.message.content
    assert len({tuple(t.logprob for t in c.logprobs.content) for c in r.choices}) > 1
    # a voting strategy's one choice: the winning sample's tokens, plain and streamed (with the text, at the end)
    voted = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, logprobs=True,
                                           extra_body={"strategy": "maj@3", "seed": 3})
    assert "".join(t.token for t in voted.choices[0].logprobs.content) == voted.choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, logprobs=True, stream=True,
                                                 extra_body={"strategy": "maj@3", "seed": 3}))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in voted.choices[0].logprobs.content]


def test_completion_logprobs_and_echo(client: OpenAI) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(d) <= 2 for d in lp.top_logprobs) and lp.text_offset[0] == 0
    echo = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=1, echo=True)
    e = echo.choices[0]
    assert e.text == prompt + r.choices[0].text
    n_prompt = echo.usage.prompt_tokens
    assert "".join(e.logprobs.tokens[:n_prompt]) == prompt
    assert e.logprobs.token_logprobs[0] is None and e.logprobs.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in e.logprobs.token_logprobs[1:])
    # the generated tokens' logprobs are the same whether the prompt was echoed or not
    assert [round(x, 4) for x in e.logprobs.token_logprobs[n_prompt:]] == [round(x, 4) for x in lp.token_logprobs]
    assert e.logprobs.text_offset[n_prompt] == len(prompt)
    # a log-likelihood task's question: how likely is " Paris" after the prompt?
    paris = client.completions.create(model=MODEL, prompt=prompt + " Paris", max_tokens=1, logprobs=1, echo=True)
    london = client.completions.create(model=MODEL, prompt=prompt + " London", max_tokens=1, logprobs=1, echo=True)
    assert paris.choices[0].logprobs.token_logprobs[n_prompt] > london.choices[0].logprobs.token_logprobs[n_prompt]
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, logprobs=1, echo=True,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == e.text
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == e.logprobs.tokens


# -- penalties and logit_bias ---------------------------------------------------------------------
COUNT = "Count from 1 to 20: 1, 2, 3,"


def test_penalties_change_the_sampled_text(client: OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=COUNT, max_tokens=24)
    zero = client.completions.create(model=MODEL, prompt=COUNT, max_tokens=24, frequency_penalty=0,
                                     presence_penalty=0)
    freq = client.completions.create(model=MODEL, prompt=COUNT, max_tokens=24, frequency_penalty=2.0)
    hello = [{"role": "user", "content": "Say hello ten times."}]
    pres = client.chat.completions.create(model=MODEL, messages=hello, max_tokens=24, presence_penalty=2.0)
    pres0 = client.chat.completions.create(model=MODEL, messages=hello, max_tokens=24)
    assert zero.choices[0].text == plain.choices[0].text
    assert freq.choices[0].text != plain.choices[0].text
    assert pres.choices[0].message.content != pres0.choices[0].message.content
    # the repeated ", " of a count is what a frequency penalty pushes down
    assert freq.choices[0].text.count(",") < plain.choices[0].text.count(",")


def test_a_banned_token_never_appears(client: OpenAI, engine: Any) -> None:
    comma = engine.tokenize(",", add_special=False, parse_special=False)
    assert len(comma) == 1
    plain = client.completions.create(model=MODEL, prompt=COUNT, max_tokens=16, logprobs=0)
    assert "," in plain.choices[0].logprobs.tokens
    banned = client.completions.create(model=MODEL, prompt=COUNT, max_tokens=16, n=4, temperature=1.0,
                                       logit_bias={str(comma[0]): -100}, logprobs=0)
    for c in banned.choices:
        assert c.logprobs.tokens and "," not in c.logprobs.tokens


# -- reasoning_effort -----------------------------------------------------------------------------
def test_reasoning_effort_picks_the_test_time_compute(client: OpenAI) -> None:
    q = [{"role": "user", "content": "What is 7 + 5? Answer with a number."}]
    low = client.chat.completions.create(model=MODEL, messages=q, max_tokens=32, reasoning_effort="low")
    minimal = client.chat.completions.create(model=MODEL, messages=q, max_tokens=32, reasoning_effort="minimal")
    high = client.chat.completions.create(model=MODEL, messages=q, max_tokens=32, reasoning_effort="high")
    medium = client.chat.completions.create(model=MODEL, messages=q, max_tokens=32, reasoning_effort="medium")
    es = {name: r.model_extra["edgescale"] for name, r in
          (("low", low), ("minimal", minimal), ("high", high), ("medium", medium))}
    assert es["low"]["strategy"] == "single" and es["low"]["plan"]["strategy"] == "single"
    assert es["minimal"]["reasoning_effort"] == "low" and es["minimal"]["strategy"] == "single"
    assert es["high"]["strategy"] == HIGH and es["high"]["plan"]["k"] == 6  # the server's --reasoning-effort
    assert es["medium"]["strategy"] == "auto" and es["medium"]["plan"] != es["low"]["plan"]
    assert es["high"]["plan"] != es["low"]["plan"] and es["high"]["samples"] > es["low"]["samples"]
    explicit = client.chat.completions.create(model=MODEL, messages=q, max_tokens=32, reasoning_effort="high",
                                              extra_body={"strategy": "single"})
    assert explicit.model_extra["edgescale"]["strategy"] == "single"  # an explicit strategy comes first
    with pytest.raises(BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=q, max_tokens=8, reasoning_effort="extreme")
    assert bad.value.body["param"] == "reasoning_effort"


# -- unknown and refused fields -------------------------------------------------------------------
@pytest.mark.parametrize("field, value, param", [
    ("top_logprobs", 3, "top_logprobs"),  # without logprobs: true
    ("frequency_penalty", 3, "frequency_penalty"),
    ("logit_bias", {"x": 1}, "logit_bias"),
    ("best_of", 3, "best_of"),
    ("audio", {"voice": "alloy"}, "audio"),
    ("functions", [{"name": "f"}], "functions"),
])
def test_fields_a_client_relies_on_are_refused_when_not_honoured(server: ServerProcess, field: str, value: Any,
                                                                  param: str | None) -> None:
    body = {"messages": ASK, "max_tokens": 4, field: value}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]


def test_informational_fields_are_accepted(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, user="u1", metadata={"a": "b"},
                                       store=False, service_tier="auto", extra_body={"prompt_cache_key": "k",
                                                                                    "safety_identifier": "s"})
    assert r.choices[0].message.content is not None


def test_logit_bias_out_of_vocabulary_is_a_400(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2,
                                                         "logit_bias": {"99999999": 5}}, timeout=60)
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]


# -- tools ----------------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_call(name: str, arguments: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    import jsonschema

    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)
    args = json.loads(arguments)
    jsonschema.validate(args, schema)
    return dict(args)


def test_a_forced_tool_call_plain_and_streamed(client: OpenAI) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME], tool_choice=forced,
                                       max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    args = _valid_call(call.function.name, call.function.arguments, [WEATHER, TIME])
    chunks = list(client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME],
                                                 tool_choice=forced, max_tokens=64, stream=True))
    parts = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert parts[0].id and parts[0].function.name == "get_weather"
    streamed_args = "".join(p.function.arguments or "" for p in parts)
    assert _valid_call("get_weather", streamed_args, [WEATHER]) == args
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_required_picks_one_of_the_tools_and_votes_on_the_call(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER, TIME],
                                       tool_choice="required", max_tokens=64, extra_body={"strategy": "maj@4"})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    args = _valid_call(call.function.name, call.function.arguments, [WEATHER, TIME])
    es = r.model_extra["edgescale"]
    assert es["samples"] == 4 and sum(es["votes"].values()) >= 1
    assert json.loads(es["answer"]) == {"name": call.function.name, "arguments": args}  # the canonical call won


def test_tool_history_and_auto_and_none(client: OpenAI) -> None:
    history = [*WEATHER_Q,
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=32)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert (choice.message.content is not None) != bool(choice.message.tool_calls)
    none = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER], tool_choice="none",
                                          max_tokens=16)
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tool_fields_are_400s(server: ServerProcess, extra: dict[str, Any], param: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": WEATHER_Q, "max_tokens": 4, **extra},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# -- without a server ---------------------------------------------------------------------------
def test_the_effort_table_and_its_flag() -> None:
    from edgescale.errors import UsageError
    from edgescale.serve.fields import default_efforts, parse_efforts

    assert dict(default_efforts(16)) == {"low": "single", "medium": "auto", "high": "conf@16:online=1,temp=0.4"}
    assert dict(default_efforts(8))["high"] == "conf@8:online=1,temp=0.4"  # within --max-samples
    assert dict(parse_efforts(["minimal=maj@3", "high=adaptive"], 16)) == {
        "low": "maj@3", "medium": "auto", "high": "adaptive"}
    for bad in ("extreme=single", "low", "low=maj@x"):
        with pytest.raises(UsageError):
            parse_efforts([bad], 16)


@pytest.mark.parametrize("text, name", [
    ('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}', "get_weather"),
    ('```json\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n```', "get_time"),
    ('{"name": "nope", "arguments": {}}', None),
    ('{"name": "get_time", "arguments": "Oslo"}', None),
    ("It is sunny.", None),
])
def test_auto_reads_a_call_only_when_the_text_is_one(text: str, name: str | None) -> None:
    from edgescale.serve.tools import parse_tools

    tools = parse_tools({"tools": [WEATHER, TIME]})
    assert tools is not None and tools.choice == "auto" and tools.constraint() is None
    call = tools.call_in(text)
    assert (call["function"]["name"] if call else None) == name
    if call:
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_a_bad_reasoning_effort_flag_fails_in_one_line() -> None:
    from tests.test_cli import assert_one_line_error, cli

    assert_one_line_error(cli("serve", "--reasoning-effort", "extreme=single"), 2, "--reasoning-effort takes")
    assert_one_line_error(cli("serve", "--reasoning-effort", "high=maj@32"), 2, "--max-samples")
