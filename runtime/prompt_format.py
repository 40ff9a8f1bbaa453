"""A query's prompt as tokens: text or chat messages, through the model's chat template, with
OpenAI's function definitions where a request offers them.

Functions reach the model through the template when it reads a ``tools`` variable
(:meth:`~edgescale.runtime.engine.Engine.renders_tools`), else as a block of text (the caller's
``tools_prompt``) appended to the first system message, or in a system message of their own.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence, Union

from edgescale.errors import ContextOverflow, EmptyPrompt
from edgescale.runtime.chat import user_messages
from edgescale.runtime.engine import Engine

Prompt = Union[str, Sequence[Mapping[str, str]]]  # text, or chat messages


def with_system_block(messages: Sequence[Mapping[str, str]], block: str) -> list[Mapping[str, str]]:
    """The messages with ``block`` at the end of the first system message (one made if none)."""
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def prompt_tokens(engine: Engine, prompt: Prompt, *, chat: bool = True, system: str | None = None,
                  tools: str = "", tools_prompt: str = "") -> list[int]:
    """A prompt's tokens: a string (with ``system`` before it), or chat messages, through the chat
    template unless ``chat`` is off. ``tools``: the functions offered (JSON text of OpenAI's
    ``tools`` list), ``tools_prompt`` the text that offers them where the template does not."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyPrompt("empty prompt")
        if not tools:
            tokens = engine.format_prompt(prompt, chat=chat, system=system)
            return _checked(engine, tokens)
        prompt = user_messages(prompt, system)
    elif not any(str(m.get("content") or "").strip() for m in prompt):
        raise EmptyPrompt("empty prompt: the messages have no content")
    if not tools:
        return _checked(engine, engine.format_messages(prompt, chat=chat))
    functions = json.loads(tools)
    if chat and engine.renders_tools(functions):
        return _checked(engine, engine.format_messages(prompt, chat=chat, tools=functions))
    return _checked(engine, engine.format_messages(with_system_block(prompt, tools_prompt), chat=chat))


def _checked(engine: Engine, tokens: list[int]) -> list[int]:
    n_ctx = engine.info.n_ctx_train
    if len(tokens) >= n_ctx:
        raise ContextOverflow(f"prompt is {len(tokens)} tokens; the model's context holds {n_ctx}")
    return tokens
