"""Constrained decoding: what a sample's tokens must match, and the per-sequence matcher.

The engine is llguidance (JSON schemas, regular expressions, Lark and GBNF grammars;
a token mask in tens of microseconds: ``bench/structured.py``). A :class:`Constraint`
is plain data (front ends parse it, requests carry it, workers pickle it); a
:class:`Matcher` is one sequence's parser state over one engine's vocabulary. The
generator masks a sequence's logits row with its matcher before the sampler sees it,
and feeds the matcher the token drawn. Forks clone the matcher.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import numpy.typing as npt

from edgescale.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    import llguidance

ConstraintKind = Literal["json_schema", "json_object", "regex", "choices", "grammar"]
KINDS: tuple[ConstraintKind, ...] = ("json_schema", "json_object", "regex", "choices", "grammar")
ANY_JSON_OBJECT = '{"type": "object"}'
# JSON on one line, spaced as Python's json.dumps: a small model given free whitespace can
# spend its tokens on it. A schema's own "x-guidance" options override these.
JSON_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise BackendUnavailable("structured output needs llguidance: pip install 'llguidance>=1.0'") from None
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """What every token of a sample must keep matching, as text: a JSON schema (its JSON),
    ``json_object`` (any JSON object), a regular expression, a JSON list of choices, or a
    grammar (Lark or GBNF: llguidance reads both). Build with :func:`parse_constraint`."""

    kind: ConstraintKind
    source: str
    name: str | None = None  # the schema's name (OpenAI's json_schema.name)

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_schema", "json_object")

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema output is validated against (None: not JSON)."""
        if self.kind == "json_object":
            return {"type": "object"}
        if self.kind == "json_schema":
            loaded: dict[str, Any] = json.loads(self.source)
            return loaded
        return None

    def grammar(self) -> str:
        """The llguidance grammar (not checked: :func:`parse_constraint` did)."""
        llg = _llguidance()
        if self.kind == "json_object":
            return str(llg.LLMatcher.grammar_from_json_schema(ANY_JSON_OBJECT, defaults=JSON_LAYOUT))
        if self.kind == "json_schema":
            return str(llg.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_LAYOUT))
        if self.kind == "regex":
            return str(llg.LLMatcher.grammar_from_regex(self.source))
        if self.kind == "choices":
            return str(llg.grammar_from("choice", self.source))
        return str(llg.grammar_from("grammar", self.source))

    def describe(self) -> str:
        if self.kind == "choices":
            return "one of " + ", ".join(json.loads(self.source))
        if self.kind == "json_schema" and self.name:
            return f"JSON schema {self.name!r}"
        return {"json_schema": "a JSON schema", "json_object": "a JSON object", "regex": f"regex {self.source!r}",
                "grammar": "a grammar"}.get(self.kind, self.kind)


def parse_constraint(kind: str, source: str | Sequence[str] | dict[str, Any], *, name: str | None = None,
                     where: str = "") -> Constraint:
    """A checked constraint; a bad one raises UsageError with one line naming what is wrong
    (``where``: the flag or field it came from)."""
    prefix = f"{where}: " if where else ""
    if kind not in KINDS:
        raise UsageError(f"{prefix}unknown constraint kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "choices":
        items = [s.strip() for s in source.split(",")] if isinstance(source, str) else list(source)
        items = [s for s in items if isinstance(s, str) and s]
        if not items or (not isinstance(source, str) and len(items) != len(list(source))):
            raise UsageError(f"{prefix}choices must be a non-empty list of non-empty strings")
        text = json.dumps(items)
    elif kind == "json_schema":
        text = _schema_text(source, prefix)
    elif kind == "json_object":
        text = ANY_JSON_OBJECT
    else:
        if not isinstance(source, str) or not source.strip():
            raise UsageError(f"{prefix}the {kind} is empty")
        text = source
    constraint = Constraint(kind=kind, source=text, name=name)
    check_grammar(constraint, prefix)
    return constraint


def _schema_text(source: str | Sequence[str] | dict[str, Any], prefix: str) -> str:
    if isinstance(source, str):
        try:
            schema = json.loads(source)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise UsageError(f"{prefix}the schema is not JSON: {exc.msg} ({where})") from None
    else:
        schema = source
    if not isinstance(schema, dict):
        raise UsageError(f"{prefix}a JSON schema must be a JSON object")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise UsageError(f"{prefix}invalid JSON schema at {at}: {exc.message}") from None
    return json.dumps(schema)


def check_grammar(constraint: Constraint, prefix: str = "") -> None:
    """The engine's own check: a feature it cannot enforce, a regex or grammar it cannot parse."""
    llg = _llguidance()
    try:
        grammar = constraint.grammar()
    except ValueError as exc:
        raise UsageError(f"{prefix}{_first_line(str(exc))}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        what = constraint.kind.replace("_", " ")
        raise UsageError(f"{prefix}invalid or unsupported {what}: {_first_line(messages[0])}")


def _first_line(text: str) -> str:
    return " ".join(text.strip().split())[:300]


@dataclass(frozen=True)
class AnswerTail:
    """A constrained answer after free reasoning: when a sample ends (or reaches
    ``max_new_tokens - budget``), ``lead`` is appended and its answer is decoded greedily
    under ``constraint``, in at most ``max_tokens`` tokens."""

    constraint: Constraint
    lead: str = "\n\nThe answer is"
    max_tokens: int = 12


class Vocab:
    """One engine's vocabulary as llguidance reads it (built once per engine: ~0.3 s for
    49k tokens, ~1.7 s for 262k)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, n_vocab: int) -> None:
        self.tokenizer = tokenizer
        self.n_vocab = n_vocab  # the logits row's width (may exceed the tokenizer's)
        self.words = (tokenizer.vocab_size + 31) // 32

    def matcher(self, constraint: Constraint) -> Matcher:
        llg = _llguidance()
        m = llg.LLMatcher(self.tokenizer, constraint.grammar(), log_level=0)
        if m.is_error():
            raise UsageError(f"{constraint.kind} not supported: {_first_line(m.get_error())}")
        return Matcher(self, m)


def llama_vocab(vocab_ptr: Any, n_vocab: int, eog: Sequence[int]) -> Vocab:
    """The vocabulary of a llama.cpp model (its ``llama_vocab`` pointer)."""
    _llguidance()
    import warnings

    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():  # it reads token attributes through a binding llama-cpp-python deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        return Vocab(lltokenizer_from_vocab(vocab_ptr, n_vocab=n_vocab, eos_token=list(eog)), n_vocab)


def hf_vocab(tokenizer_json: str, n_vocab: int, eog: Sequence[int]) -> Vocab:
    """The vocabulary of a Hugging Face ``tokenizer.json`` (the ONNX backend's)."""
    llg = _llguidance()
    return Vocab(llg.LLTokenizer(tokenizer_json, n_vocab=n_vocab, eos_token=list(eog)), n_vocab)


class Matcher:
    """One sequence's position in its constraint. ``mask`` returns the logits row with every
    token the constraint forbids at -inf (a buffer of this matcher's own: the row it was
    given is untouched, it may be shared); ``consume`` advances by the token drawn."""

    def __init__(self, vocab: Vocab, matcher: llguidance.LLMatcher) -> None:
        self.vocab = vocab
        self._m = matcher
        self._bits = np.zeros(vocab.words, dtype=np.int32)
        self._out: npt.NDArray[np.float32] | None = None
        self.mask_seconds = 0.0  # time in checks and masks (bench/structured.py reads it)
        self.masks = 0  # full-vocabulary masks computed
        self.checks = 0  # single tokens checked

    def clone(self) -> Matcher:
        return Matcher(self.vocab, self._m.deep_copy())

    def mask(self, row: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        t0 = time.perf_counter()
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        n = row.shape[-1]
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=min(n, self._bits.size * 32))
        if self._out is None or self._out.shape[0] != n:
            self._out = np.empty(n, dtype=np.float32)
        out = self._out
        out.fill(-np.inf)
        np.copyto(out[: allowed.shape[0]], row[: allowed.shape[0]], where=allowed.view(bool))
        self.mask_seconds += time.perf_counter() - t0
        self.masks += 1
        return out

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next (a check of one token: microseconds, where a mask
        over the vocabulary takes ~100)."""
        t0 = time.perf_counter()
        ok = self._m.validate_tokens([token]) == 1
        self.mask_seconds += time.perf_counter() - t0
        self.checks += 1
        return ok

    def consume(self, token: int) -> bool:
        """Advance by ``token``; False when the constraint does not allow it (the matcher
        is then in error: the sample is not valid)."""
        return bool(self._m.consume_token(token))

    @property
    def accepting(self) -> bool:
        """What was consumed is a complete match."""
        return bool(self._m.is_accepting())

    @property
    def stopped(self) -> bool:
        """No further token is allowed (the match is complete, or the matcher failed)."""
        return bool(self._m.is_stopped())

    @property
    def failed(self) -> bool:
        return bool(self._m.is_error())


def response_format_constraint(value: Any, where: str = "response_format") -> Constraint | None:
    """A constraint from what a caller passes as ``response_format``: a :class:`Constraint`;
    OpenAI's ``{"type": "text" | "json_object" | "json_schema", "json_schema": {"name",
    "schema", "strict"}}``; edgescale's ``{"type": "regex", "regex": ...}``, ``{"type":
    "choices", "choices": [...]}`` and ``{"type": "grammar", "grammar": ...}``; or a class
    with ``model_json_schema()`` (a Pydantic model). None: free text."""
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):
        schema = value.model_json_schema()  # type: ignore[attr-defined]
        return parse_constraint("json_schema", schema, name=value.__name__, where=where)
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be an object with a 'type'")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind in ("json_object", "json"):
        return parse_constraint("json_object", "", where=where)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise UsageError(f"{where}: json_schema needs an object with a 'schema' object")
        name = spec.get("name")
        return parse_constraint("json_schema", spec["schema"], name=name if isinstance(name, str) else None,
                                where=f"{where}.json_schema.schema")
    if kind in ("regex", "choices", "grammar"):
        body = value.get(kind)
        if body is None or (kind != "choices" and not isinstance(body, str)):
            raise UsageError(f"{where}: type {kind} needs a string {kind!r} field" if kind != "choices"
                             else f"{where}: type choices needs a 'choices' list of strings")
        if kind == "choices" and not isinstance(body, list):
            raise UsageError(f"{where}: type choices needs a 'choices' list of strings")
        return parse_constraint(kind, body, where=where)
    raise UsageError(f"{where}: unknown type {kind!r}; use text, json_object, json_schema, regex, choices or grammar")
