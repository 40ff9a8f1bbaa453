"""Word and free-text answers: the ``yesno``, ``text`` and ``auto`` kinds.

Private helper of :mod:`edgescale.answers.extract`, whose module docstring
states the rules. This module owns yes/no words (``true``/``false`` map to
them), SQuAD-style text normalisation and the exact form kept for text that
looks like math, the text spans an answer can occupy (a box, the rest of an
"answer is" sentence, the first line), and ``auto``, which reads a number
where there is one (via :mod:`~edgescale.answers.numbers`) and text
otherwise.
"""

from __future__ import annotations

import re
import unicodedata

from edgescale.answers.latex import fix_latex_shorthand, strip_latex_wrappers
from edgescale.answers.numbers import (
    gsm8k_number,
    last_number,
    normalize_number,
    number_after,
)
from edgescale.answers.spans import (
    ANSWER_PHRASE,
    SENTENCE_END,
    Extracted,
    Normalizer,
    last_boxed,
    make_extracted,
    trimmed,
)

_YESNO_WORD = re.compile(r"\b(?P<word>yes|no|true|false)\b", re.IGNORECASE)
_YESNO_PHRASE = re.compile(
    ANSWER_PHRASE.pattern + r"[^\S\n]*(?:\*+[^\S\n]*)?(?P<word>yes|no|true|false)\b",
    re.IGNORECASE,
)
_YESNO_FIRST = re.compile(r"\A[\W_]*?(?P<word>yes|no|true|false)\b", re.IGNORECASE)

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# Text that reads as math: LaTeX, an operator, or a minus / comma between operands.
_MATH_MARKERS = re.compile(
    r"[\\{}_^=+<>]|(?:^|[\s(\[=,])-\s*[\w(]|\w\s+-\s+\w|[0-9]-\w|\w-[0-9]"
    r"|\b[A-Za-z]-\w|\w-[A-Za-z]\b|[0-9]\s*,\s*-?[0-9]"
)  # single-letter operands ("p-q") count, hyphenated words ("Jean-Paul") do not
_LATEX_COSMETIC = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|(?<!\\)\\[!,;: ]|\$")


# --------------------------------------------------------------------------
# Normalisers.


def normalize_yesno(value: str) -> str | None:
    """``"yes"`` or ``"no"`` for a yes/no/true/false word (case, punctuation ignored)."""
    word = strip_latex_wrappers(value).strip(" \t\r\n*()[]{}.:!,;$\"'").lower()
    if word in ("yes", "true"):
        return "yes"
    if word in ("no", "false"):
        return "no"
    return None


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _squad_normalize(value: str) -> str:
    """SQuAD's ``normalize_answer``: lower, drop punctuation, articles, extra spaces."""
    no_punct = "".join(ch for ch in value.lower() if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", no_punct).split())


def _looks_like_math(value: str) -> bool:
    return _MATH_MARKERS.search(value) is not None


def _math_canonical_once(value: str) -> str:
    value = fix_latex_shorthand(strip_latex_wrappers(value))
    value = _LATEX_COSMETIC.sub("", value)
    return "".join(value.lower().split()).rstrip(".")


def _math_canonical(value: str) -> str:
    """Math compared as written, minus case, whitespace, sizing and ``$`` (to a fixed point)."""
    previous = None
    while previous != value:
        previous, value = value, _math_canonical_once(value)
    return value


def normalize_text(value: str) -> str | None:
    """Short free text, SQuAD style; math kept exact up to case, spacing and ``$``.

    SQuAD's rule would turn ``-2 + 7i`` into ``2 + 7i`` and ``3, 5, 7`` into
    ``3 5 7``, so text that looks like math (LaTeX, an operator, a minus or a
    comma between operands) only loses case, whitespace, ``\\left``/``\\right``,
    spacing commands, ``$`` and a trailing period. If that leaves nothing
    math-like (``\\left(3\\right)`` -> ``(3)``) the SQuAD rule applies.
    """
    text = strip_latex_wrappers(value)
    if _looks_like_math(text):
        text = _math_canonical(text)
        if _looks_like_math(text):
            return text or None
    text = _squad_normalize(text)
    if _looks_like_math(text):  # SQuAD keeps symbols such as "+" and "="
        text = _math_canonical(text)
    return text or None


def normalize_auto(value: str) -> str | None:
    """A number when ``value`` (or its text form, e.g. ``"0/0"`` -> ``"00"``) reads as one."""
    number = normalize_number(value)
    if number is not None:
        return number
    text = normalize_text(value)
    if text is None:
        return None
    number = normalize_number(text)
    return text if number is None else number


# --------------------------------------------------------------------------
# Spans shared by the kinds below.


def _boxed_as(text: str, normalize: Normalizer) -> Extracted | None:
    box = last_boxed(text)
    if box is None:
        return None
    raw, span = trimmed(text, *box[1])
    return make_extracted(text, span, normalize) if raw else None


def _phrase_text_span(text: str, pos: int) -> tuple[int, int]:
    """From ``pos`` to the end of its line, cut at the first sentence end."""
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    sentence = SENTENCE_END.search(text, pos, line_end)
    end = sentence.start() if sentence is not None else line_end
    return trimmed(text, pos, end)[1]


def _text_after(text: str, phrase: re.Match[str], normalize: Normalizer) -> Extracted | None:
    span = _phrase_text_span(text, phrase.end())
    return make_extracted(text, span, normalize) if span[1] > span[0] else None


def _first_line(text: str, normalize: Normalizer) -> Extracted | None:
    """The first line whose content ``normalize`` accepts."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        raw, span = trimmed(text, start, end)
        found = make_extracted(text, span, normalize) if raw else None
        if found is not None:
            return found
        start = end + 1
    return None


# --------------------------------------------------------------------------
# yes / no


def _word_match(text: str, match: re.Match[str] | None) -> Extracted | None:
    return None if match is None else make_extracted(text, match.span("word"), normalize_yesno)


def extract_yesno(text: str) -> Extracted | None:
    """A ``yesno`` answer: boxed, else "answer: yes", else the first word, else the last."""
    found = _boxed_as(text, normalize_yesno)
    if found is not None:
        return found
    phrases = list(_YESNO_PHRASE.finditer(text))
    if phrases:
        return _word_match(text, phrases[-1])
    first = _word_match(text, _YESNO_FIRST.match(text))
    if first is not None:
        return first
    words = list(_YESNO_WORD.finditer(text))
    return _word_match(text, words[-1]) if words else None


# --------------------------------------------------------------------------
# text and auto


def _phrase_text(text: str) -> Extracted | None:
    for phrase in reversed(list(ANSWER_PHRASE.finditer(text))):
        found = _text_after(text, phrase, normalize_text)
        if found is not None:
            return found
    return None


def extract_text(text: str) -> Extracted | None:
    """A ``text`` answer: boxed, else after the last "answer is", else the first line."""
    return (
        _boxed_as(text, normalize_text) or _phrase_text(text) or _first_line(text, normalize_text)
    )


def _phrase_auto(text: str) -> Extracted | None:
    """The last answer phrase: the number right after it, else the text after it."""
    for phrase in reversed(list(ANSWER_PHRASE.finditer(text))):
        found = number_after(text, phrase.end()) or _text_after(text, phrase, normalize_auto)
        if found is not None:
            return found
    return None


def extract_auto(text: str) -> Extracted | None:
    """An ``auto`` answer: boxed, ``#### N``, "answer is", the last number, the first line."""
    return (
        _boxed_as(text, normalize_auto)
        or gsm8k_number(text)
        or _phrase_auto(text)
        or last_number(text)
        or _first_line(text, normalize_auto)
    )
