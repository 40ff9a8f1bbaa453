"""Number answers: finding numbers in text and their exact normal form.

Private helper of :mod:`edgescale.answers.extract`, whose module docstring
states the rules (priority of ``#### N``, ``\\boxed{}``, "the answer is N" and
the last number; the normal form of decimals and reduced fractions). This
module owns the number token, LaTeX clean-up around a number (``\\$``, ``\\%``,
degrees, spacing commands, ``x =``), unit and trailing-text checks, decimal and
fraction canonicalisation (:func:`normalize_number`), and the number finders
(:func:`extract_number` and the pieces ``auto`` reuses).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from edgescale.answers.latex import fix_latex_shorthand, strip_latex_wrappers
from edgescale.answers.spans import (
    ANSWER_PHRASE,
    BOX_COMMAND,
    SENTENCE_END,
    Extracted,
    box_argument,
    make_extracted,
    matching_braces,
    trimmed,
)
from edgescale.answers.words import WORD_NUMBER, words_to_int

# A decimal number body: "1,234,567", "1234", "3.50", ".5". Thousands groups
# must be exactly three digits and not run on ("12,3456" is "12" then "3456").
_BODY = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
_SIGNED_BODY = rf"[-+\u2212]?(?:{_BODY})"

# A number as it appears in running text. It must not continue a word or a
# decimal ("x2", "H2O", "v1.2" are skipped); a sign counts only when it is not
# glued to a preceding word ("16-3" is 16 and 3).
_NUMBER_TOKEN = re.compile(
    rf"(?<![\w.])"
    rf"(?:[-+\u2212](?=\\?\$?\s?[0-9.\\]))?"
    rf"(?:\\?\$\s?)?"
    rf"(?:\\[dt]?frac\{{\s*{_SIGNED_BODY}\s*\}}\{{\s*{_SIGNED_BODY}\s*\}}"
    rf"|(?:{_BODY})(?:/(?:{_BODY}))?)"
    rf"(?:\s?\\?%)?"
)

# The start of a normalised-number candidate (after LaTeX clean-up).
_NUMBER_LITERAL = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:"
    rf"\\frac\{{\s*(?P<fn>{_SIGNED_BODY})\s*\}}\{{\s*(?P<fd>{_SIGNED_BODY})\s*\}}"
    rf"|(?P<n>{_BODY})(?:\s*/\s*(?P<d>{_BODY}))?)"
)

_GSM8K_MARK = re.compile(r"####[^\S\n]*")

# LaTeX clean-up before reading a number.
_LATEX_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\u00b0|\\degree")
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\(?:left|right|displaystyle)(?![A-Za-z])")
_LEADING_ASSIGNMENT = re.compile(r"\A\s*[A-Za-z]\s*=\s*")
_TRAILING_JUNK = frozenset(".,;:!?)]}")
_MATH_AFTER_NUMBER = re.compile(r"[=+*/^\\{}<>]|\s-\s")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*\^\s*(?:[0-9]|\{\s*[0-9]\s*\})")  # "cm^2"
_CURRENCY_AFTER = frozenset("\u20ac\u00a3\u00a5\u00a2")

# a text that ends on an equation whose right side is a placeholder ("1 + 4 = N", "= ?") states
# the question, not an answer: its last number is an operand
_UNRESOLVED_END = re.compile(r"=[^\S\n]*(?:[A-Za-z]|\?+|_+)[^\S\n]*[.!]?\s*\Z")
_GAP_LIMIT = 32  # characters allowed between "answer is" and its number
_PRONOUN_WORDS = frozenset({"one"})  # "one of them": a number only where an answer is due


# --------------------------------------------------------------------------
# Normal form.


def _clean_number_text(value: str) -> str:
    value = strip_latex_wrappers(value)
    value = value.replace("\u2212", "-").replace("{,}", ",")
    value = fix_latex_shorthand(value)
    value = _LATEX_DEGREES.sub("", value)
    value = _LATEX_NOISE.sub("", value)
    value = value.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    value = value.replace("**", "")  # Markdown bold, not multiplication
    return _LEADING_ASSIGNMENT.sub("", value).strip()


def _remainder_ok(rest: str) -> bool:
    """After a number only closing punctuation, or units/words after a space, may follow.

    ``"18 dollars"`` is 18, but ``"5x - 7y = 0"`` and ``"5 x + 1"`` are not 5.
    """
    words = rest.strip()
    if all(ch in _TRAILING_JUNK for ch in words):
        return True
    if not rest[0].isspace() or not (words[0].isalpha() or words[0] in _CURRENCY_AFTER):
        return False
    return _MATH_AFTER_NUMBER.search(_UNIT_POWER.sub("", words)) is None


def _canonical_decimal(body: str, negative: bool) -> str:
    """``"1,234.500"`` -> ``"1234.5"`` by string surgery (no precision limit)."""
    whole, _, frac = body.replace(",", "").partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    digits = whole + (f".{frac}" if frac else "")
    if digits == "0":
        return "0"
    return f"-{digits}" if negative else digits


def _to_fraction(body: str) -> Fraction:
    signless = body.replace("\u2212", "-").replace(",", "")
    return Fraction(signless)


def _canonical_fraction(numerator: str, denominator: str, negative: bool) -> str | None:
    try:
        num, den = _to_fraction(numerator), _to_fraction(denominator)
        if den == 0:
            return None
        q = num / den
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if negative:
        q = -q
    if q.denominator == 1:
        return str(q.numerator)
    return f"{q.numerator}/{q.denominator}"


def normalize_number(value: str) -> str | None:
    """The normal form of ``value`` as a number (decimal or reduced ``p/q``), else ``None``."""
    cleaned = _clean_number_text(value)
    match = _NUMBER_LITERAL.match(cleaned)
    if match is None:
        return _normalize_words(cleaned)
    if not _remainder_ok(cleaned[match.end() :]):
        return None
    negative = match.group("sign") == "-"
    if match.group("fn") is not None:
        return _canonical_fraction(match.group("fn"), match.group("fd"), negative)
    if match.group("d") is not None:
        return _canonical_fraction(match.group("n"), match.group("d"), negative)
    return _canonical_decimal(match.group("n"), negative)


def _normalize_words(cleaned: str) -> str | None:
    """A whole number in words ("eleven", "twenty-one") at the start of ``cleaned``."""
    match = WORD_NUMBER.match(cleaned)
    if match is None or not _remainder_ok(cleaned[match.end() :]):
        return None
    n = words_to_int(match.group(0))
    return None if n is None else str(n)


# --------------------------------------------------------------------------
# Finders.


def _number_at(text: str, pos: int) -> Extracted | None:
    match = _NUMBER_TOKEN.match(text, pos)
    return None if match is None else make_extracted(text, match.span(), normalize_number)


def _after_last(
    pattern: re.Pattern[str], text: str, find: Callable[[str, int], Extracted | None]
) -> Extracted | None:
    """``find(text, end)`` after the last match of ``pattern`` where it finds anything."""
    for match in reversed(list(pattern.finditer(text))):
        found = find(text, match.end())
        if found is not None:
            return found
    return None


def gsm8k_number(text: str) -> Extracted | None:
    """The number after the last GSM8K ``####`` marker that is followed by one."""
    return _after_last(_GSM8K_MARK, text, _number_at)


def _boxed_number(text: str) -> Extracted | None:
    closing = matching_braces(text)
    for match in reversed(list(BOX_COMMAND.finditer(text))):
        box = box_argument(text, match.end(), closing)
        if box is not None:
            raw, span = trimmed(text, *box[1])
            found = make_extracted(text, span, normalize_number) if raw else None
            if found is not None:
                return found
    return None


def number_after(text: str, pos: int) -> Extracted | None:
    """The first number after ``pos`` in the same sentence, at most ``_GAP_LIMIT`` chars on."""
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    start, last_start = pos, min(line_end, pos + _GAP_LIMIT + 1)
    while start < last_start:  # only token starts inside the gap are tried: linear time
        match = _NUMBER_TOKEN.match(text, start, line_end) or WORD_NUMBER.match(text, start, line_end)
        if match is None:
            start += 1
            continue
        if SENTENCE_END.search(text, pos, match.start()):
            return None
        found = make_extracted(text, match.span(), normalize_number)
        if found is not None:
            return found
        start = max(match.end(), start + 1)
    return None


def _phrase_number(text: str) -> Extracted | None:
    return _after_last(ANSWER_PHRASE, text, number_after)


def last_number(text: str) -> Extracted | None:
    """The last number in ``text`` that normalises to one: digits, or words ("eleven",
    "twenty-one"; not the bare word "one", which is as often a pronoun). None when the
    text ends on an unresolved equation ("1 + 4 = N"): its numbers are the question's."""
    if _UNRESOLVED_END.search(text):
        return None
    tokens = [m.span() for m in _NUMBER_TOKEN.finditer(text)]
    tokens += [m.span() for m in WORD_NUMBER.finditer(text) if m.group(0).lower() not in _PRONOUN_WORDS]
    for span in sorted(tokens, reverse=True):
        found = make_extracted(text, span, normalize_number)
        if found is not None:
            return found
    return None


def extract_number(text: str) -> Extracted | None:
    """A ``number`` answer: ``#### N``, else a boxed number, else "answer is N", else the last
    number (N in digits or words)."""
    for finder in (gsm8k_number, _boxed_number, _phrase_number, last_number):
        found = finder(text)
        if found is not None:
            return found
    return None
