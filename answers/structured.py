"""Structured answers: JSON text in its canonical voting form, and checked against a schema.

Votes over JSON answers count canonical forms (sorted keys, no spaces, integral floats as
integers), so ``{"a": 1.0, "b": 2}`` and ``{"b":2,"a":1}`` are one answer; a per-field
vote (:func:`field_vote`) takes each top-level field's own majority.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from typing import Any, Sequence

from edgescale.answers.choices import DEFAULT_CHOICE_LETTERS
from edgescale.answers.spans import Extracted
from edgescale.runtime.constraints import AnswerTail, parse_constraint


def canonical_json(text: str) -> str | None:
    """``text`` as canonical JSON (sorted keys, no spaces, integral floats as integers),
    or None when it is not JSON: the form votes are counted in."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def schema_errors(text: str, schema: dict[str, Any]) -> str | None:
    """Why ``text`` is not a valid instance of ``schema`` (one line), or None when it is."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return None
    at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"at {at}: {error.message}"


def field_vote(answers: Sequence[str]) -> tuple[str | None, dict[str, dict[str, int]]]:
    """Each top-level field of the canonical JSON objects ``answers`` takes its own majority
    (ties: the value seen first). Returns the assembled object (canonical; None when no
    answer is an object) and the votes per field (value's canonical JSON -> count). A field
    is kept when most of the objects have it."""
    objects = [json.loads(a) for a in answers]
    objects = [o for o in objects if isinstance(o, dict)]
    if not objects:
        return None, {}
    keys: Counter[str] = Counter(k for o in objects for k in o)
    out: dict[str, Any] = {}
    votes: dict[str, dict[str, int]] = {}
    for key, n in keys.items():
        if 2 * n <= len(objects) and n < len(objects):
            continue
        counts: Counter[str] = Counter(json.dumps(o[key], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                                       for o in objects if key in o)
        votes[key] = dict(counts)
        out[key] = json.loads(counts.most_common(1)[0][0])
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False), votes


def extract_json(text: str) -> Extracted | None:
    """The sample's text as a JSON answer: all of it (what a schema-constrained sample
    writes), else its last fenced or bare object/array that parses."""
    stripped = text.strip()
    value = canonical_json(stripped)
    if value is not None:
        start = len(text) - len(text.lstrip())
        return Extracted(value, stripped, (start, start + len(stripped)))
    for end in range(len(text), 0, -1):
        if text[end - 1] not in "}]":
            continue
        opener = "{" if text[end - 1] == "}" else "["
        start = text.rfind(opener, 0, end)
        while start >= 0:
            value = canonical_json(text[start:end])
            if value is not None:
                return Extracted(value, text[start:end], (start, end))
            start = text.rfind(opener, 0, start)
        break
    return None


# What an answer tail may decode, by answer kind: an optional space, the answer, and an
# optional full stop (a sentence's end, so that "12." can end the answer).
_TAIL_PATTERNS = {
    "number": r" ?-?[0-9]+(\.[0-9]*)?(/[0-9]+)?",
    "yesno": r" ?([Yy]es|[Nn]o)\.?",
}
TAIL_KINDS = ("number", "choice", "yesno")


def answer_tail(kind: str, choices: Sequence[str] = ()) -> AnswerTail:
    """The constrained answer tail for an answer kind (``--answer number:tail``): a number,
    one of the choice letters (as many as ``choices``, else A to E), yes or no."""
    if kind == "choice":
        letters = string.ascii_uppercase[: len(choices)] if choices else DEFAULT_CHOICE_LETTERS
        pattern = r" ?\(?(" + "|".join(letters) + r")\)?\.?"
    elif kind in _TAIL_PATTERNS:
        pattern = _TAIL_PATTERNS[kind]
    else:
        raise ValueError(f"no answer tail for kind {kind!r}")
    return AnswerTail(parse_constraint("regex", pattern))
