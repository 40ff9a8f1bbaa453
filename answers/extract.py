"""Answer extraction: turn a model's free text into a normalised answer for voting.

Every strategy (majority@k, short-m@k, adaptive, early-exit) compares answers,
never raw text, so two samples that say "$1,234.00" and "1234" must produce the
same string. This module does that for five answer kinds:

``number``
    Priority (first that yields a valid number wins):

    1. GSM8K's ``#### N`` marker (Cobbe et al. 2021, the format of the gold
       solutions);
    2. the last ``\\boxed{...}`` whose content is a number (the MATH
       convention, Hendrycks et al. 2021; ``last_boxed_only_string`` in
       ``hendrycks/math``);
    3. the last "the answer is N" / "Answer: N" / "Final answer: N" phrase
       (Wei et al. 2022's chain-of-thought exemplars end this way);
    4. the last number in the text.

    N may be written in words (``strategies/answer_words.py``): "eleven",
    "twenty-one", "a dozen", "three hundred and five" (whole numbers, to the
    millions); so may a gold answer. In step 4 the bare word "one" is not a
    number ("one of them"); after "the answer is" it is.

    Normal form: thousands separators, ``$``, ``%``, LaTeX spacing and trailing
    units dropped (a unit follows a space: ``"18 dollars"`` is 18, while
    ``"5x"`` and ``"5 x + 1"`` are not numbers); decimals lose trailing zeros (``"7.00" -> "7"``,
    ``"3.50" -> "3.5"``); ``"-0" -> "0"``; a leading ``+`` is dropped.
    Fractions (``"6/8"``, ``\\frac{6}{8}``, ``\\frac68``) are kept exact as a *reduced*
    ``"p/q"`` (``"3/4"``), sign on the numerator, and become an integer when
    the denominator divides out (``"4/2" -> "2"``). A fraction is not turned
    into a decimal: ``"1/2"`` and ``"0.5"`` are different votes, because a
    decimal read off text is usually rounded and an exact fraction is what
    MATH's gold answers use. Digits grouped by spaces (``"1 234"``) are never
    merged.

``choice``
    A letter, ``A``-``E`` by default or one per entry of ``choices``; returned
    uppercase. Patterns, strongest first: ``\\boxed{B}``; "answer is (B)",
    "Answer: B", "the correct option is B"; a line that is only ``B`` /
    ``(B)`` / ``B.``; a response that starts with ``B.`` / ``B)``; ``**B**``;
    ``(B)``; ``B)``; finally, a response that reproduces exactly one choice's
    text. The English words "A" and "I" followed by more words ("A robot
    ...") are not read as letters.

``yesno``
    ``"yes"`` or ``"no"`` (``true``/``false`` map to them): ``\\boxed{}``,
    then an explicit "answer: yes", then the response's first word, then the
    last yes/no/true/false in the text.

``text``
    Short free text: the last ``\\boxed{}``, else what follows the last
    "answer is" / "Answer:" on its line (up to the end of the sentence), else
    the first non-empty line; normalised as SQuAD does (Rajpurkar et al.
    2016, ``normalize_answer`` in the official evaluation script): lowercase,
    punctuation and the articles a/an/the removed, whitespace collapsed.
    Unicode punctuation counts as punctuation. Text that looks like math
    (LaTeX, an operator, a minus or comma between operands: ``-2 + 7i``,
    ``p - q``, ``3, 5, 7``) would lose its signs that way, so it only loses
    case, whitespace, ``\\left``/``\\right``, spacing commands and ``$``.

``auto``
    A ``\\boxed{}`` wins (number when numeric, else text); else ``#### N``;
    else the last "answer is ..." phrase (number when a number follows it,
    else text); else the last number; else the first line as text. When
    ``choices`` are given, ``auto`` means ``choice``.

An answer that cannot be extracted is ``None``: it does not vote. No function
here raises on any text; an unknown ``kind`` is a caller error and raises
:class:`edgescale.errors.UsageError`.

This module is the public API and the dispatch by kind; the rules above are
implemented in private helper modules: ``answer_numbers`` (``number``),
``answer_choices`` (``choice``), ``answer_text`` (``yesno``, ``text``, ``auto``),
``answer_spans`` (the :class:`Extracted` record, boxes, braces, answer phrases)
and ``answer_latex`` (LaTeX clean-up shared by the kinds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal, get_args

from edgescale.answers.choices import (
    DEFAULT_CHOICE_LETTERS,
    extract_choice,
    normalize_choice,
)
from edgescale.answers.numbers import extract_number, normalize_number
from edgescale.answers.spans import (
    Extracted,
    Normalizer,
    last_boxed,
    probe_content_end,
    trimmed,
)
from edgescale.answers.structured import canonical_json, extract_json
from edgescale.answers.text import (
    extract_auto,
    extract_text,
    extract_yesno,
    normalize_auto,
    normalize_text,
    normalize_yesno,
)
from edgescale.errors import UsageError

__all__ = [
    "ANSWER_KINDS",
    "DEFAULT_CHOICE_LETTERS",
    "AnswerKind",
    "Extracted",
    "extract",
    "extract_probe",
    "is_hedge",
    "last_boxed",
    "normalize",
]

AnswerKind = Literal["number", "choice", "yesno", "text", "json", "auto"]
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)

_NORMALIZERS: Mapping[str, Normalizer] = MappingProxyType(
    {
        "number": normalize_number,
        "choice": normalize_choice,
        "yesno": normalize_yesno,
        "text": normalize_text,
        "json": canonical_json,
        "auto": normalize_auto,
    }
)

_HEDGE_WORDS = re.compile(
    r"\b(?:wait|hold|but|okay|hmm+|maybe|perhaps|not\s+sure|unsure|i\s+think|"
    r"let\s+me|double[-\s]?check|actually|however|alternatively)\b|\?",
    re.IGNORECASE,
)
_HEDGE_NO = re.compile(r"\bno\b", re.IGNORECASE)


def extract(
    text: str, kind: AnswerKind = "auto", *, choices: Sequence[str] | None = None
) -> Extracted | None:
    """Extract and normalise the final answer of ``kind`` from a model's ``text``.

    Returns ``None`` when no valid answer of that kind is found; never raises
    on any text. ``choices`` (the options' texts) set the valid letters for
    ``kind="choice"`` and enable matching a reproduced option text; with
    ``kind="auto"`` they make the kind ``choice``.
    """
    _check_kind(kind)
    if kind == "number":
        return extract_number(text)
    if kind == "choice" or (kind == "auto" and choices):
        return extract_choice(text, choices)
    if kind == "yesno":
        return extract_yesno(text)
    if kind == "text":
        return extract_text(text)
    if kind == "json":
        return extract_json(text)
    return extract_auto(text)


def normalize(value: str, kind: AnswerKind) -> str | None:
    """The voting form of ``value`` as an answer of ``kind``; ``None`` if it is not one.

    Idempotent on its own output: ``normalize(normalize(v, k), k) == normalize(v, k)``.
    ``"auto"`` is a number when ``value`` reads as one, else text.
    """
    _check_kind(kind)
    return _NORMALIZERS[kind](value)


def extract_probe(text: str, kind: AnswerKind) -> Extracted | None:
    """The answer in text decoded right after an early-exit cue ending in ``\\boxed{``.

    The content runs to the brace that closes the cue's (unmatched) ``{``; if
    that brace never comes, to the first newline or the end. It is then
    normalised as ``kind`` (Dynasor-CoT's ``obtain_answer``, Fu et al. 2024,
    which instead returns an empty answer for an unclosed brace: a 20-token
    probe often stops mid-answer, and the certainty check below catches
    hedging).
    """
    _check_kind(kind)
    end = probe_content_end(text)
    raw, span = trimmed(text, 0, end)
    if not raw:
        return None
    value = normalize(raw, kind)
    return None if value is None else Extracted(value, raw, span)


def is_hedge(text: str) -> bool:
    """True when probe ``text`` is not a confident answer (Dynasor-CoT's certainty check).

    Dynasor-CoT (Fu et al. 2024, ``hao-ai-lab/Dynasor`` ``dynasor/cot.py``)
    treats a probe as uncertain when it contains any of "wait", "hold",
    "but", "okay", "no", "hmm". This check uses those words plus "maybe",
    "perhaps", "not sure", "I think", "let me", "double-check", "actually",
    "however", "alternatively" and any "?", matched as whole words rather
    than substrings (Dynasor's substring test also fires on "know", "number",
    "denominator"). "no" counts only outside the answer itself, so a probe
    answering "no}" to a yes/no question is not a hedge. Empty text or an
    empty answer is a hedge.
    """
    if not text.strip():
        return True
    end = probe_content_end(text)
    answer, rest = text[:end], text[end:]
    if not answer.strip():
        return True
    if _HEDGE_WORDS.search(text):
        return True
    return _HEDGE_NO.search(rest) is not None


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise UsageError(f"unknown answer kind {kind!r}; choose one of {', '.join(ANSWER_KINDS)}")
