"""Where an answer sits in a response: the answer record, spans, braces and boxes.

Private helper of :mod:`edgescale.answers.extract`; import the public names
(:class:`Extracted`, :func:`last_boxed`) from there. This module owns what the
per-kind extractors share about *locating* an answer, independent of its kind:

- the :class:`Extracted` record and :func:`make_extracted`, which normalises a
  span with a given normaliser;
- :func:`trimmed` spans;
- brace matching and the ``\\boxed{...}`` / ``\\fbox{...}`` argument
  (:func:`last_boxed`), and where an early-exit probe's open brace closes;
- the "the answer is" phrase and the sentence end that bound an answer on its line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

# Maps raw answer text to its voting form, or ``None`` when it is not an answer.
Normalizer: TypeAlias = Callable[[str], str | None]


@dataclass(frozen=True)
class Extracted:
    """One extracted answer.

    ``value`` is the normalised answer used for voting; ``raw`` the substring
    as it appeared and ``span`` its offsets, so ``text[span[0]:span[1]] == raw``.
    """

    value: str
    raw: str
    span: tuple[int, int]


# "the answer is", "Final answer:", "answer would be", "**Answer:**", ...
ANSWER_PHRASE = re.compile(
    r"\banswer\b(?:[^\S\n]*\([^()\n]{0,20}\))?[^\S\n]*(?:\*+[^\S\n]*)?"
    r"(?:(?:is|was|would[^\S\n]+be|should[^\S\n]+be|will[^\S\n]+be)\b[^\S\n]*:?|[:=])",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")

BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_SPACE_ARG = re.compile(r"[^\S\n]+(?P<arg>[^\s${}]+)")


def trimmed(text: str, start: int, end: int) -> tuple[str, tuple[int, int]]:
    """``text[start:end]`` without surrounding whitespace, with its span."""
    end = min(end, len(text))
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return text[start:end], (start, end)


def make_extracted(text: str, span: tuple[int, int], normalize: Normalizer) -> Extracted | None:
    """``text[span[0]:span[1]]`` as an answer normalised by ``normalize``; ``None`` if invalid."""
    raw = text[span[0] : span[1]]
    value = normalize(raw)
    return None if value is None else Extracted(value, raw, span)


def _unescaped_braces(text: str) -> Iterator[tuple[int, str]]:
    """Index and character of each ``{`` and ``}`` in ``text``; backslash escapes skipped."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "{}":
            yield i, ch
        i += 1


def matching_braces(text: str) -> dict[int, int]:
    """Map each ``{`` index to its matching ``}`` index; backslash escapes skipped."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in _unescaped_braces(text):
        if ch == "{":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    return pairs


def box_argument(
    text: str, pos: int, closing: dict[int, int]
) -> tuple[str, tuple[int, int]] | None:
    """The argument of a box command whose name ends at ``pos``."""
    brace = pos
    while brace < len(text) and text[brace] in " \t":
        brace += 1
    if brace < len(text) and text[brace] == "{":
        end = closing.get(brace)
        if end is None:
            return None
        return text[brace + 1 : end], (brace + 1, end)
    spaced = _BOX_SPACE_ARG.match(text, pos)
    if spaced is None:
        return None
    return spaced.group("arg"), spaced.span("arg")


def last_boxed(text: str) -> tuple[str, tuple[int, int]] | None:
    """Content and span of the last closed ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Nested braces are matched; ``\\{`` and ``\\}`` are literal braces. A box
    whose brace never closes is skipped (its answer was cut off). The MATH
    form ``\\boxed 5`` (argument after a space) is accepted as well. The span
    covers the content only, so ``text[span[0]:span[1]]`` is the content.
    """
    closing = matching_braces(text)
    for match in reversed(list(BOX_COMMAND.finditer(text))):
        found = box_argument(text, match.end(), closing)
        if found is not None:
            return found
    return None


def probe_content_end(text: str) -> int:
    """Index of the ``}`` closing an already-open ``{``, else of the first newline, else len."""
    depth = 1
    for i, ch in _unescaped_braces(text):
        depth += 1 if ch == "{" else -1
        if depth == 0:
            return i
    newline = text.find("\n")
    return len(text) if newline < 0 else newline
