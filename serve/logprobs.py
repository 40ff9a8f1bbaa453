"""OpenAI's ``logprobs`` objects from token records (``runtime.token_logprobs``).

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null}``.
Completions (the legacy shape): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``,
``top_logprobs`` a ``{token: logprob}`` object per position (None where there is none: the
first token of an echoed prompt, or when no alternatives were asked for).
"""

from __future__ import annotations

from typing import Any, Sequence

from edgescale.runtime.token_logprobs import TokenLogprob


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    content = [{**e.to_dict(), "top_logprobs": [a.to_dict() for a in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], top: int, offset: int = 0) -> dict[str, Any]:
    """``offset``: the characters of the choice's text before the first entry."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    tops: list[dict[str, float] | None] = [
        {a.text: a.logprob for a in e.top if a.logprob is not None} if top and e.top else None for e in entries]
    return {"tokens": [e.text for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": offsets}


def logprobs_object(chat: bool, entries: Sequence[TokenLogprob] | None, top: int,
                    offset: int = 0) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (None when the request did not ask)."""
    if entries is None:
        return None
    return chat_logprobs(entries) if chat else completion_logprobs(entries, top, offset)
