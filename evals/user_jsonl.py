"""Benchmark items from a user's JSONL file of ``{"question", "answer"}`` objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from edgescale.answers.extract import ANSWER_KINDS, AnswerKind, normalize
from edgescale.errors import UsageError
from edgescale.evals.items import LETTERS, Item, lettered
from edgescale.evals.items import gold as normalised_gold


def _infer_kind(answer: str, choices: tuple[str, ...]) -> AnswerKind:
    if choices:
        return "choice"
    if normalize(answer, "yesno") is not None:
        return "yesno"
    if normalize(answer, "number") is not None:
        return "number"
    return "text"


def _choice_gold(answer: str, choices: tuple[str, ...]) -> str | None:
    """A letter naming one of ``choices``, or the letter of the choice whose text is ``answer``."""
    letter = normalize(answer, "choice")
    if letter is not None and letter in LETTERS[: len(choices)]:
        return letter
    folded = answer.strip().casefold()
    matches = [i for i, choice in enumerate(choices) if choice.strip().casefold() == folded]
    return LETTERS[matches[0]] if len(matches) == 1 else None


def _string_field(record: dict[str, Any], key: str, where: str) -> str:
    """A required text field; numbers are taken as text and a boolean answer as yes/no."""
    if key not in record:
        raise UsageError(f"{where}: missing {key!r}")
    value = record[key]
    if isinstance(value, bool) and key == "answer":
        return "yes" if value else "no"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{where}: {key!r} must be a string")
    text = str(value)
    if not text.strip():
        raise UsageError(f"{where}: {key!r} is empty")
    return text


def _user_choices(record: dict[str, Any], where: str) -> tuple[str, ...]:
    raw = record.get("choices")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, (str, int, float)) for c in raw):
        raise UsageError(f"{where}: 'choices' must be a list of strings")
    if len(raw) > len(LETTERS):
        raise UsageError(f"{where}: at most {len(LETTERS)} choices are supported")
    return tuple(str(choice) for choice in raw)


def _user_kind(
    record: dict[str, Any], answer: str, choices: tuple[str, ...], where: str
) -> AnswerKind:
    kind = record.get("kind")
    if kind is None:
        return _infer_kind(answer, choices)
    if kind not in ANSWER_KINDS:
        raise UsageError(f"{where}: 'kind' must be one of {', '.join(ANSWER_KINDS)}")
    if kind == "choice" and not choices:
        raise UsageError(f"{where}: kind 'choice' needs a 'choices' list")
    if kind == "auto" and choices:
        return "choice"  # extract(..., "auto", choices=...) reads a letter
    return cast(AnswerKind, kind)


def _user_item(record: Any, number: int, where: str) -> Item:
    if not isinstance(record, dict):
        raise UsageError(f"{where}: each line must be a JSON object")
    question = _string_field(record, "question", where)
    answer = _string_field(record, "answer", where)
    choices = _user_choices(record, where)
    kind = _user_kind(record, answer, choices, where)
    if kind == "choice":
        gold = _choice_gold(answer, choices)
        if gold is None:
            raise UsageError(f"{where}: answer {answer!r} is not a letter or text of a choice")
        question = lettered(question, choices)
    else:
        gold = normalised_gold(answer, kind, where)
    item_id = record.get("id", number)
    return Item(str(item_id), question, gold, kind, choices)


def load_jsonl(path: str | Path) -> list[Item]:
    """Items from a JSONL file of ``{"question", "answer"}`` objects.

    Optional keys: ``id``, ``kind``, ``choices``.

    Without ``kind``: ``choice`` when ``choices`` are given, ``yesno`` for a
    yes/no/true/false answer, ``number`` for a numeric one, else ``text``;
    ``"auto"`` with ``choices`` means ``choice``. A ``choice`` answer may be a
    letter or the text of one choice; the question gets the lettered options
    appended. ``id`` defaults to the line number.
    Blank lines are skipped; any other bad line raises :class:`UsageError`
    naming its line number.
    """
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise UsageError(f"dataset file not found: {file}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read dataset file {file}: {exc}") from exc
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from exc
        items.append(_user_item(record, number, where))
    return items
