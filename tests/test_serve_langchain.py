"""An agent framework through edgescale: langchain-openai's ChatOpenAI makes a chat call and a
tool call against a real `edgescale serve` on loopback (nothing leaves 127.0.0.1: tiktoken, which
langchain-openai imports, is only used to count tokens, which these calls do not ask for)."""

from __future__ import annotations

import json
from typing import Iterator

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from tests.serve_harness import ServerProcess  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 degrees and sunny in {city}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(["--threads", "2", "--parallel", "2"])
    yield srv
    srv.stop()


@pytest.fixture
def llm(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ChatOpenAI:
    monkeypatch.setenv("LANGSMITH_TRACING", "false")  # no tracing upload, whatever the environment says
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    return ChatOpenAI(model="smollm2-135m", base_url=server.url + "/v1", api_key="unused", max_tokens=32,
                      temperature=0, max_retries=0, timeout=120)


def test_a_chat_call(llm: ChatOpenAI) -> None:
    reply = llm.invoke([HumanMessage("What is the capital of France?")])
    assert isinstance(reply, AIMessage) and isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(str(part.content) for part in llm.stream("What is the capital of France?"))
    assert streamed == reply.content


def test_a_tool_call_and_its_result(llm: ChatOpenAI) -> None:
    agent = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather in Paris?")
    reply = agent.invoke([question])
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    result = get_weather.invoke(call["args"])
    # the tool's result goes back in the history and the model answers in text
    answer = llm.bind_tools([get_weather]).invoke([question, reply, ToolMessage(result, tool_call_id=call["id"])])
    assert isinstance(answer, AIMessage) and (answer.content or answer.tool_calls)
    json.dumps(answer.tool_calls)  # whatever came back is plain data
