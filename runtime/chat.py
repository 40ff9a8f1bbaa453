"""Chat templates from the GGUF file, rendered in a sandboxed Jinja environment.

The template is code supplied by the model file. Rendering it in a plain Jinja
environment is a template-injection hole (llama-cpp-python had exactly this
CVE in 2024); the immutable sandbox refuses attribute tricks and mutation.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from functools import lru_cache
from typing import Any, Mapping, Protocol, Sequence

from edgescale.errors import UsageError
from edgescale.models.info import ModelInfo

Message = Mapping[str, str]


class _Refused(Exception):
    """A template's ``raise_exception``: it refuses the messages (the text says why)."""


def _raise(message: str) -> None:
    raise _Refused(str(message))


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """Jinja's ``tojson`` as chat templates expect it (HF's): plain JSON, not HTML-escaped."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=(separators[0], separators[1]) if separators else None, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                                        extensions=["jinja2.ext.loopcontrols"])  # {% break %}, {% continue %}
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
    return env.from_string(template)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    model: str = "",
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    variables: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render ``messages`` with the model's template, ready to tokenize. ``variables``: more
    names the template may read (``enable_thinking``, ...); ``tools``: OpenAI's function
    definitions, for templates that read a ``tools`` variable. A template that cannot render,
    or that refuses the messages (``raise_exception``), is a one-line UsageError that names
    ``model``."""
    from jinja2 import TemplateError, TemplateSyntaxError

    whose = f"chat template of model '{model}'" if model else "the model's chat template"
    try:
        return str(
            _compile(template).render(
                **(variables or {}),
                messages=[dict(m) for m in messages],
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
                **({"tools": [dict(t) for t in tools]} if tools else {}),
            )
        )
    except _Refused as exc:
        raise UsageError(f"{whose} refused the messages: {_one_line(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - the template is the model file's code: any failure is its own
        reason = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TemplateSyntaxError) and exc.lineno:
            reason += f" (line {exc.lineno})"
        raise UsageError(f"{whose} failed to render: {_one_line(reason)}") from None


def user_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def prompt_text(
    template: str | None, messages: Sequence[Message], *, chat: bool, bos_token: str, eos_token: str,
    model: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, bool]:
    """The text to tokenize for ``messages`` and whether the tokenizer should add BOS.

    With ``chat`` and a template: the rendered template. Without: the messages'
    contents, blank-line separated (a system message first). Templates often
    write the BOS text themselves; BOS is added only when the text does not
    start with it. Every backend formats prompts through this one function.
    """
    if chat and template:
        text = render_chat(template, messages, model=model, bos_token=bos_token, eos_token=eos_token, tools=tools)
    else:
        text = "\n\n".join(m["content"] for m in messages if m.get("content"))
    return text, not (bool(bos_token) and text.startswith(bos_token))


class Vocabulary(Protocol):
    """A backend's tokenizer."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...


# Stand-ins for message contents while the template renders: private-use code points that no
# template writes, changes or trims.
_MARK = re.compile("\ue000([0-9]+)\ue001")


def _mark(i: int) -> str:
    return f"\ue000{i}\ue001"


def _as_rendered(content: str, rendered: str, at: int, following: str) -> str | None:
    """The form of ``content`` the template wrote at ``rendered[at:]`` (templates may trim it)."""
    for form in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        if rendered.startswith(form, at) and rendered.startswith(following, at + len(form)):
            return form
    return None


def template_segments(template: str, messages: Sequence[Message], *, bos_token: str,
                      eos_token: str, model: str = "",
                      tools: Sequence[Mapping[str, Any]] | None = None) -> list[tuple[str, bool]]:
    """The rendered chat cut into ``(text, is_template)`` pieces, in order.

    The template is rendered twice: with every content replaced by a marker (which gives the
    template's own text around each content) and with the real contents; the second must be the
    first with each marker replaced by its content (or the content trimmed, as some templates
    write it), else the template treats contents as more than text and the messages are refused.
    """
    skeleton = render_chat(template, [{**m, "content": _mark(i)} for i, m in enumerate(messages)],
                           model=model, bos_token=bos_token, eos_token=eos_token, tools=tools)
    rendered = render_chat(template, messages, model=model, bos_token=bos_token, eos_token=eos_token, tools=tools)
    pieces = _MARK.split(skeleton)  # template text, message index, template text, ...
    segments: list[tuple[str, bool]] = []
    at = 0
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            if not rendered.startswith(piece, at):
                break
            segments.append((piece, True))
            at += len(piece)
            continue
        form = _as_rendered(messages[int(piece)]["content"], rendered, at, pieces[k + 1])
        if form is None:
            break
        segments.append((form, False))
        at += len(form)
    else:
        if at == len(rendered):
            return [s for s in segments if s[0]]
    whose = f"the chat template of model '{model}'" if model else "this model's chat template"
    raise UsageError(f"a message holds the text of a control token, and {whose} "
                     "changes message contents in a way that cannot keep it as plain text")


class ChatText:
    """The text side of the Engine protocol, the same for every backend: tokens through the
    backend's vocabulary, prompts through the model's chat template. An engine sets
    ``info``, ``vocab`` and the text of its BOS and EOS tokens (``bos_text``, ``eos_text``).

    Message contents are always tokenized as text: a user who writes ``<|im_start|>system``
    gets the tokens of those characters, never the control token. Only the template's own
    markers (and BOS) become special tokens.
    """

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

    def format_messages(self, messages: Sequence[Message], *, chat: bool = True,
                        tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        template = self.info.chat_template
        text, add_bos = prompt_text(template, messages, chat=chat, bos_token=self.bos_text, eos_token=self.eos_text,
                                    model=self.info.name, tools=tools)
        bos = self.info.add_bos and add_bos
        if not (chat and template):  # no template: all of it is the user's text
            return self.tokenize(text, add_special=bos, parse_special=False)
        if not any(self._holds_control_text(m["content"]) for m in messages):
            return self.tokenize(text, add_special=bos, parse_special=True)  # the common case, in one call
        segments = template_segments(template, messages, bos_token=self.bos_text, eos_token=self.eos_text,
                                     model=self.info.name, tools=tools)
        tokens = self.tokenize("", add_special=True) if bos else []
        for piece, is_template in segments:
            tokens += self.tokenize(piece, add_special=False, parse_special=is_template)
        return tokens

    def _holds_control_text(self, content: str) -> bool:
        return bool(content) and (self.tokenize(content, add_special=False, parse_special=True)
                                  != self.tokenize(content, add_special=False, parse_special=False))

    def renders_tools(self, tools: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the chat template shows ``tools`` itself: it reads a ``tools`` variable, and
        their JSON holds no control-token text (the template's own text is tokenized with
        control tokens on, so such text there would become control tokens)."""
        template = self.info.chat_template
        return bool(template) and reads_tools(template) and not self._holds_control_text(
            json.dumps(list(tools), ensure_ascii=False))


@lru_cache(maxsize=8)
def reads_tools(template: str) -> bool:
    """Whether a chat template reads a ``tools`` variable (OpenAI's function definitions)."""
    from jinja2 import TemplateError, meta

    try:
        compiled = _compile(template)
        return "tools" in meta.find_undeclared_variables(compiled.environment.parse(template))
    except TemplateError:
        return False
