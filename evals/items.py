"""What a benchmark question is (:class:`Item`), and the helpers every reader of items shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from edgescale.answers.extract import AnswerKind, normalize
from edgescale.errors import UsageError

PromptStyle = Literal["zero-shot", "few-shot", "bare"]
Examples = tuple[tuple[str, str], ...]  # (question, worked answer) pairs
PROMPT_STYLES: tuple[str, ...] = ("zero-shot", "few-shot", "bare")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Item:
    """One benchmark question.

    ``question`` is the bare question (with the lettered options for multiple
    choice); ``answer`` the gold answer, normalised for ``kind``;
    ``fewshot`` optional (question, worked answer) examples.
    """

    id: str
    question: str
    answer: str
    kind: AnswerKind
    choices: tuple[str, ...] = ()
    fewshot: Examples = ()


def gold(value: str, kind: AnswerKind, where: str) -> str:
    normalized = normalize(value, kind)
    if normalized is None:
        raise UsageError(f"{where}: gold answer {value!r} is not a valid {kind} answer")
    return normalized


def lettered(question: str, choices: Sequence[str]) -> str:
    """``question`` followed by one ``"A. option"`` line per choice."""
    lines = [question.strip()]
    lines.extend(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return "\n".join(lines)
