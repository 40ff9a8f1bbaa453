"""OpenAI's function calling: ``tools``, ``tool_choice``, ``parallel_tool_calls``, tool calls in the
history, and ``tool_calls`` in the response.

The functions reach the model through its chat template where the template reads a ``tools``
variable (and their JSON holds no control-token text), else in a system-message block
(:func:`tools_prompt`): each function's name, description and parameter schema as JSON, and the
call format, one JSON object ``{"name": ..., "arguments": {...}}`` (SmolLM2's template, like
many, knows no ``tools``). Earlier calls and their results are written into the history as
text: an assistant message's ``tool_calls`` as those objects, a ``tool`` message as a user
message holding the result.

``tool_choice``: ``required`` or a named function holds the output to the call schema with the
structured-output engine (``anyOf`` the functions: ``name`` a constant, ``arguments`` the
function's ``parameters``; an object schema that does not say ``additionalProperties`` is
closed, as llama.cpp's converter treats it), so every sample is a valid call, and voting
strategies vote on the canonical call (the ``json`` answer kind). ``auto`` (the default with tools) leaves the output
free and reads a call from it when the text is one such object (a fenced code block around it
allowed); else the text is the answer. ``none``: the functions are not shown and nothing is read
as a call. At most one call per choice (``parallel_tool_calls`` is accepted either way).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any, Mapping

from edgescale.errors import UsageError
from edgescale.runtime.constraints import Constraint, parse_constraint
from edgescale.settings import AskSettings

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters_json: str  # the parameters' JSON schema, as JSON text (hashable, frozen)

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(json.loads(self.parameters_json))


@dataclass(frozen=True)
class Tools:
    functions: tuple[Function, ...]
    choice: str  # none | auto | required | a function's name (forced)
    forced: bool  # the output is held to the call schema

    def constraint(self) -> Constraint | None:
        """The call schema the output is held to (None: free output)."""
        if not self.forced:
            return None
        allowed = [f for f in self.functions if self.choice in ("required", f.name)]
        variants = [{"type": "object",
                     "properties": {"name": {"const": f.name}, "arguments": closed(f.parameters)},
                     "required": ["name", "arguments"], "additionalProperties": False} for f in allowed]
        schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        return parse_constraint("json_schema", schema, name="tool_call", where="tools")

    def call_in(self, text: str) -> dict[str, Any] | None:
        """The call a choice's text holds, in OpenAI's shape (None: the text is no call)."""
        if self.choice == "none":
            return None
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            return None
        name, arguments = value["name"], value["arguments"]
        if not any(f.name == name for f in self.functions) or not isinstance(arguments, dict):
            return None
        return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema that leaves ``additionalProperties`` out, closed (as llama.cpp's schema
    converter does): a small model given room invents properties instead of ending the call."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def parse_tools(body: Mapping[str, Any]) -> Tools | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` checked (UsageError naming the
    field). None: no functions offered."""
    raw = body.get("tools")
    choice_raw = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise UsageError("field 'parallel_tool_calls' must be a boolean")
    if raw is None or raw == []:
        if choice_raw not in (None, "none", "auto"):
            raise UsageError("field 'tool_choice' names a function, but 'tools' offers none")
        return None
    if not isinstance(raw, list):
        raise UsageError("field 'tools' must be a list of {\"type\": \"function\", \"function\": {...}}")
    functions: list[Function] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict):
            raise UsageError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", ...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -")
        if any(f.name == name for f in functions):
            raise UsageError(f"tools[{i}]: the function {name!r} is offered twice")
        params = fn.get("parameters", EMPTY_PARAMETERS)
        description = fn.get("description", "")
        if not isinstance(params, dict) or not isinstance(description, str):
            raise UsageError(f"tools[{i}].function: 'parameters' must be a JSON schema object and "
                             f"'description' a string")
        functions.append(Function(name, description, json.dumps(params, sort_keys=True)))
    choice = "auto" if choice_raw is None else choice_raw
    if isinstance(choice, dict):
        named = choice.get("function") if choice.get("type") == "function" else None
        choice = named.get("name") if isinstance(named, dict) else None
        if not isinstance(choice, str) or not any(f.name == choice for f in functions):
            raise UsageError("field 'tool_choice' must be none, auto, required or {\"type\": \"function\", "
                             "\"function\": {\"name\": ...}} naming one of the tools")
    elif choice not in ("none", "auto", "required"):
        raise UsageError(f"field 'tool_choice' must be none, auto, required or a function, got {choice!r}")
    return Tools(tuple(functions), choice, forced=choice not in ("none", "auto"))


def tools_prompt(tools: Tools) -> str:
    """The system-message block that offers the functions."""
    offered = [f for f in tools.functions if tools.choice in ("auto", "required", f.name)]
    lines = ["You can call these functions:"]
    for f in offered:
        lines.append(json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters},
                                ensure_ascii=False))
    how = ("To call a function, answer with only one JSON object: "
           '{"name": <the function\'s name>, "arguments": {<its arguments>}}.')
    if tools.choice == "auto":
        how += " Otherwise answer as usual."
    lines.append(how)
    return "\n".join(lines)


def with_tools(settings: AskSettings, tools: Tools | None) -> AskSettings:
    """The settings with the functions offered: to the chat template where it reads ``tools``,
    else in the system-message block (``runtime.prompt_format``)."""
    if tools is None or tools.choice == "none":
        return settings
    offered = [{"type": "function", "function": {"name": f.name, "description": f.description,
                                                 "parameters": f.parameters}}
               for f in tools.functions if tools.choice in ("auto", "required", f.name)]
    options = replace(settings.options, tools=json.dumps(offered, ensure_ascii=False), tools_prompt=tools_prompt(tools))
    return replace(settings, options=options)


def history_message(message: Mapping[str, Any], i: int, content: str) -> dict[str, str]:
    """An assistant message's ``tool_calls`` or a ``tool`` message as plain chat text."""
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise UsageError(f"messages[{i}]: a tool message needs its 'tool_call_id'")
        return {"role": "user", "content": f"Result of the function call {call_id}:\n{content}"}
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        raise UsageError(f"messages[{i}].tool_calls must be a non-empty list")
    written = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(
                fn.get("arguments"), str):
            raise UsageError(f"messages[{i}].tool_calls[{j}] needs a function with a name and arguments (a JSON "
                             f"string)")
        try:
            arguments = json.loads(fn["arguments"])
        except ValueError:
            raise UsageError(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON") from None
        written.append(json.dumps({"name": fn["name"], "arguments": arguments}, ensure_ascii=False))
    return {"role": "assistant", "content": "\n".join(filter(None, [content, *written]))}


def chat_message(tools: Tools | None, text: str, reason: str) -> tuple[dict[str, Any], str]:
    """A chat choice's message and finish reason: its text, or the tool call the text holds."""
    tool_call = tools.call_in(text) if tools is not None and reason == "stop" else None
    if tool_call is None:
        return {"role": "assistant", "content": text}, reason
    return {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls"


def tool_call_deltas(tools: Tools | None, index: int, text: str, reason: str) -> list[dict[str, Any]] | None:
    """A streamed tool call (None: the text is no call): the call's id and name, then its
    arguments as a delta, then the finish reason ``tool_calls``."""
    message, reason = chat_message(tools, text, reason)
    if "tool_calls" not in message:
        return None
    tc = message["tool_calls"][0]
    head = {"index": 0, "id": tc["id"], "type": "function", "function": {"name": tc["function"]["name"],
                                                                         "arguments": ""}}
    args = {"index": 0, "function": {"arguments": tc["function"]["arguments"]}}
    return [{"index": index, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None},
            {"index": index, "delta": {"tool_calls": [args]}, "logprobs": None, "finish_reason": None},
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]
