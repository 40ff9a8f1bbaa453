"""Multiple-choice answers: the letter a response picks.

Private helper of :mod:`edgescale.answers.extract`, whose module docstring
states the rules. This module owns the valid letters (``A``-``E`` by default or
one per option), the letter patterns from strongest to weakest (``\\boxed{B}``,
"the answer is (B)", a lone ``B`` line, a leading ``B.``, ``**B**``, ``(B)``,
``B)``), the check that keeps the English words "A" and "I" from reading as
letters, matching a reproduced option text (:func:`extract_choice`), and the
normal form of a letter (:func:`normalize_choice`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgescale.answers.latex import strip_latex_wrappers
from edgescale.answers.spans import Extracted, last_boxed, make_extracted, trimmed

DEFAULT_CHOICE_LETTERS = "ABCDE"

_CHOICE_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\b[^\S\n]*(?:\*+[^\S\n]*)?"
    r"(?:(?:is|was|would[^\S\n]+be|should[^\S\n]+be|will[^\S\n]+be)\b[^\S\n]*:?|[:=])"
    r"[^\S\n]*(?:\*+[^\S\n]*)?(?:(?:option|choice|letter)\b[^\S\n]*)?",
    re.IGNORECASE,
)
# A letter written as an answer: "B", "(b)", "[B]", "**B**", "\textbf{B}".
_LETTER_FORM = re.compile(
    r"(?:(?P<open>\(|\[|\*\*|\\textbf\{|\\text\{)[^\S\n]*)?(?P<letter>[A-Za-z])"
    r"(?P<close>[^\S\n]*(?:\)|\]|\*\*|\}))?(?![A-Za-z0-9_])"
)
_LETTER_LINE = re.compile(
    r"^[^\S\n]*(?:\*\*[^\S\n]*)?(?P<open>[(\[])?(?P<letter>[A-Za-z])(?P<close>[)\]])?"
    r"[.:]?(?:[^\S\n]*\*\*)?[^\S\n]*$",
    re.MULTILINE,
)
_LETTER_START = re.compile(r"\A\s*(?:\*\*)?(?P<letter>[A-Z])[.:)](?=\s|\*|\Z)")
_LETTER_BOLD = re.compile(r"\*\*[^\S\n]*\(?(?P<letter>[A-Z])\)?[.:)]?[^\S\n]*\*\*")
_LETTER_PAREN = re.compile(r"\((?P<letter>[A-Z])\)")
_LETTER_HALF_PAREN = re.compile(r"(?<![\w(])(?P<letter>[A-Z])\)")
# Words that may follow an answer letter without making it prose ("A because").
_LETTER_FOLLOWERS = re.compile(r"[^\S\n]+(?:because|since|as|which)\b", re.IGNORECASE)
_PROSE_AFTER = re.compile(r"[^\S\n]+[a-z]")


def normalize_choice(value: str) -> str | None:
    """The uppercase letter ``value`` names ("(b)", "Option C", ``\\text{D}``); else ``None``."""
    cleaned = strip_latex_wrappers(value)
    cleaned = re.sub(r"(?i)\A\s*(?:option|choice|letter)\b", "", cleaned)
    cleaned = cleaned.strip(" \t\r\n*()[]{}.:$")
    if len(cleaned) == 1 and cleaned.isascii() and cleaned.isalpha():
        return cleaned.upper()
    return None


def _choice_letters(choices: Sequence[str] | None) -> str:
    if not choices:
        return DEFAULT_CHOICE_LETTERS
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]


def _letter_extracted(
    text: str, match: re.Match[str], letters: str, *, bracketed: bool
) -> Extracted | None:
    """The letter group of ``match`` if valid; lowercase only when ``bracketed``."""
    letter = match.group("letter")
    if letter.islower() and not bracketed:
        return None
    value = letter.upper()
    if value not in letters:
        return None
    return Extracted(value, letter, match.span("letter"))


def _is_bracketed(match: re.Match[str]) -> bool:
    opened = match.groupdict().get("open")
    closed = match.groupdict().get("close")
    return bool(opened) and bool(closed)


def _reads_as_prose(text: str, match: re.Match[str]) -> bool:
    """True for the English words "A"/"I" (or a lowercase letter) starting a phrase."""
    if _is_bracketed(match):
        return False
    end = match.end()
    if _LETTER_FOLLOWERS.match(text, end):
        return False
    return match.group("letter") in "AIai" and _PROSE_AFTER.match(text, end) is not None


def _boxed_choice(text: str, letters: str) -> Extracted | None:
    box = last_boxed(text)
    if box is None:
        return None
    raw, span = trimmed(text, *box[1])
    found = make_extracted(text, span, normalize_choice) if raw else None
    return found if found is not None and found.value in letters else None


def _phrase_choice(text: str, letters: str) -> Extracted | None:
    for phrase in reversed(list(_CHOICE_PHRASE.finditer(text))):
        form = _LETTER_FORM.match(text, phrase.end())
        if form is None or _reads_as_prose(text, form):
            continue
        found = _letter_extracted(text, form, letters, bracketed=_is_bracketed(form))
        if found is not None:
            return found
    return None


def _pattern_choice(text: str, pattern: re.Pattern[str], letters: str) -> Extracted | None:
    """The last match of ``pattern`` whose letter is a valid choice."""
    for match in reversed(list(pattern.finditer(text))):
        found = _letter_extracted(text, match, letters, bracketed=_is_bracketed(match))
        if found is not None:
            return found
    return None


def _option_pattern(option: str) -> re.Pattern[str] | None:
    words = option.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(word) for word in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _option_spans(text: str, choices: Sequence[str]) -> list[tuple[int, tuple[int, int]]]:
    spans: list[tuple[int, tuple[int, int]]] = []
    for index, option in enumerate(choices[:26]):
        pattern = _option_pattern(option)
        if pattern is not None:
            spans.extend((index, m.span()) for m in pattern.finditer(text) if m.end() > m.start())
    return spans


def _covered_positions(positions: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The spans lying inside another, different span (one sweep, ``O(n log n)``)."""
    covered: set[tuple[int, int]] = set()
    furthest = -1
    for start, end in sorted(positions, key=lambda span: (span[0], -span[1])):
        if furthest >= end:
            covered.add((start, end))
        furthest = max(furthest, end)
    return covered


def _text_choice(text: str, choices: Sequence[str] | None) -> Extracted | None:
    """The letter of the only option whose text the response reproduces.

    An occurrence inside a longer option's occurrence ("water" inside "salt
    water") does not count for the shorter option.
    """
    if not choices:
        return None
    spans = _option_spans(text, choices)
    covered = _covered_positions({span for _, span in spans})
    standalone = [(index, span) for index, span in spans if span not in covered]
    indices = {index for index, _ in standalone}
    if len(indices) != 1:
        return None
    index, span = standalone[-1]
    return Extracted("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[index], text[span[0] : span[1]], span)


def extract_choice(text: str, choices: Sequence[str] | None) -> Extracted | None:
    """A ``choice`` answer: the strongest letter pattern first, else a reproduced option."""
    letters = _choice_letters(choices)
    found = _boxed_choice(text, letters) or _phrase_choice(text, letters)
    if found is not None:
        return found
    for pattern in (_LETTER_LINE, _LETTER_START, _LETTER_BOLD, _LETTER_PAREN, _LETTER_HALF_PAREN):
        found = _pattern_choice(text, pattern, letters)
        if found is not None:
            return found
    return _text_choice(text, choices)
