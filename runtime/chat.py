"""Chat templates from the GGUF file, rendered in a sandboxed Jinja environment.

The template is code supplied by the model file. Rendering it in a plain Jinja
environment is a template-injection hole (llama-cpp-python had exactly this
CVE in 2024); the immutable sandbox refuses attribute tricks and mutation.
"""

from __future__ import annotations

import datetime as _dt
import json
from functools import lru_cache
from typing import Any, Mapping, Protocol, Sequence

from edgescale.errors import UsageError
from edgescale.models.info import ModelInfo

Message = Mapping[str, str]


def _raise(message: str) -> None:
    raise UsageError(f"chat template refused the messages: {message}")


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the model's template, ready to tokenize."""
    from jinja2 import TemplateError

    try:
        return str(
            _compile(template).render(
                messages=[dict(m) for m in messages],
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        )
    except TemplateError as exc:
        raise UsageError(f"the model's chat template failed to render: {exc}") from None


def user_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def prompt_text(
    template: str | None, messages: Sequence[Message], *, chat: bool, bos_token: str, eos_token: str,
) -> tuple[str, bool]:
    """The text to tokenize for ``messages`` and whether the tokenizer should add BOS.

    With ``chat`` and a template: the rendered template. Without: the messages'
    contents, blank-line separated (a system message first). Templates often
    write the BOS text themselves; BOS is added only when the text does not
    start with it. Every backend formats prompts through this one function.
    """
    if chat and template:
        text = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)
    else:
        text = "\n\n".join(m["content"] for m in messages if m.get("content"))
    return text, not (bool(bos_token) and text.startswith(bos_token))


class Vocabulary(Protocol):
    """A backend's tokenizer."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...


class ChatText:
    """The text side of the Engine protocol, the same for every backend: tokens through the
    backend's vocabulary, prompts through the model's chat template. An engine sets
    ``info``, ``vocab`` and the text of its BOS and EOS tokens (``bos_text``, ``eos_text``)."""

    info: ModelInfo
    vocab: Vocabulary
    bos_text: str = ""
    eos_text: str = ""

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self.vocab.is_eog(token)

    def format_prompt(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        return self.format_messages(user_messages(prompt, system), chat=chat)

    def format_messages(self, messages: Sequence[Message], *, chat: bool = True) -> list[int]:
        text, add_bos = prompt_text(self.info.chat_template, messages, chat=chat,
                                    bos_token=self.bos_text, eos_token=self.eos_text)
        return self.tokenize(text, add_special=self.info.add_bos and add_bos, parse_special=True)
