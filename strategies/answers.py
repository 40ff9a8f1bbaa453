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
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Callable, Literal, Mapping, Sequence, get_args

from edgescale.errors import UsageError

AnswerKind = Literal["number", "choice", "yesno", "text", "auto"]
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)

DEFAULT_CHOICE_LETTERS = "ABCDE"


@dataclass(frozen=True)
class Extracted:
    """One extracted answer.

    ``value`` is the normalised answer used for voting; ``raw`` the substring
    as it appeared and ``span`` its offsets, so ``text[span[0]:span[1]] == raw``.
    """

    value: str
    raw: str
    span: tuple[int, int]


# --------------------------------------------------------------------------
# Regular expressions (compiled constants, no state).

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

# "the answer is", "Final answer:", "answer would be", "**Answer:**", ...
_ANSWER_PHRASE = re.compile(
    r"\banswer\b(?:[^\S\n]*\([^()\n]{0,20}\))?[^\S\n]*(?:\*+[^\S\n]*)?"
    r"(?:(?:is|was|would[^\S\n]+be|should[^\S\n]+be|will[^\S\n]+be)\b[^\S\n]*:?|[:=])",
    re.IGNORECASE,
)
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

_YESNO_WORD = re.compile(r"\b(?P<word>yes|no|true|false)\b", re.IGNORECASE)
_YESNO_PHRASE = re.compile(
    _ANSWER_PHRASE.pattern + r"[^\S\n]*(?:\*+[^\S\n]*)?(?P<word>yes|no|true|false)\b",
    re.IGNORECASE,
)
_YESNO_FIRST = re.compile(r"\A[\W_]*?(?P<word>yes|no|true|false)\b", re.IGNORECASE)

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_SPACE_ARG = re.compile(r"[^\S\n]+(?P<arg>[^\s${}]+)")

# LaTeX clean-up before reading a number or a word.
_LATEX_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{(?P<body>[^{}]*)\}"
)
_LATEX_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\u00b0|\\degree")
_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\(?:left|right|displaystyle)(?![A-Za-z])")
_LEADING_ASSIGNMENT = re.compile(r"\A\s*[A-Za-z]\s*=\s*")
_TRAILING_JUNK = frozenset(".,;:!?)]}")
_MATH_AFTER_NUMBER = re.compile(r"[=+*/^\\{}<>]|\s-\s")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*\^\s*(?:[0-9]|\{\s*[0-9]\s*\})")  # "cm^2"
_CURRENCY_AFTER = frozenset("\u20ac\u00a3\u00a5\u00a2")

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# Text that reads as math: LaTeX, an operator, or a minus / comma between operands.
_MATH_MARKERS = re.compile(
    r"[\\{}_^=+<>]|(?:^|[\s(\[=,])-\s*[\w(]|\w\s+-\s+\w|[0-9]-\w|\w-[0-9]"
    r"|\b[A-Za-z]-\w|\w-[A-Za-z]\b|[0-9]\s*,\s*-?[0-9]"
)  # single-letter operands ("p-q") count, hyphenated words ("Jean-Paul") do not
_DFRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
_FRAC_TWO_DIGITS = re.compile(r"\\frac\s*([0-9])\s*([0-9])")
_FRAC_SHORT_FIRST = re.compile(r"\\frac\s*([0-9A-Za-z])\s*(?=\{)")
_FRAC_SHORT_SECOND = re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*([0-9A-Za-z])")
_LATEX_COSMETIC = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|(?<!\\)\\[!,;: ]|\$")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")

_HEDGE_WORDS = re.compile(
    r"\b(?:wait|hold|but|okay|hmm+|maybe|perhaps|not\s+sure|unsure|i\s+think|"
    r"let\s+me|double[-\s]?check|actually|however|alternatively)\b|\?",
    re.IGNORECASE,
)
_HEDGE_NO = re.compile(r"\bno\b", re.IGNORECASE)

_GAP_LIMIT = 32  # characters allowed between "answer is" and its number


# --------------------------------------------------------------------------
# Public API.


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
        return _extract_number(text)
    if kind == "choice" or (kind == "auto" and choices):
        return _extract_choice(text, choices)
    if kind == "yesno":
        return _extract_yesno(text)
    if kind == "text":
        return _extract_text(text)
    return _extract_auto(text)


def normalize(value: str, kind: AnswerKind) -> str | None:
    """The voting form of ``value`` as an answer of ``kind``; ``None`` if it is not one.

    Idempotent on its own output: ``normalize(normalize(v, k), k) == normalize(v, k)``.
    ``"auto"`` is a number when ``value`` reads as one, else text.
    """
    _check_kind(kind)
    return _NORMALIZERS[kind](value)


def last_boxed(text: str) -> tuple[str, tuple[int, int]] | None:
    """Content and span of the last closed ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Nested braces are matched; ``\\{`` and ``\\}`` are literal braces. A box
    whose brace never closes is skipped (its answer was cut off). The MATH
    form ``\\boxed 5`` (argument after a space) is accepted as well. The span
    covers the content only, so ``text[span[0]:span[1]]`` is the content.
    """
    closing = _matching_braces(text)
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        found = _box_argument(text, match.end(), closing)
        if found is not None:
            return found
    return None


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
    end = _probe_content_end(text)
    raw, span = _trimmed(text, 0, end)
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
    end = _probe_content_end(text)
    answer, rest = text[:end], text[end:]
    if not answer.strip():
        return True
    if _HEDGE_WORDS.search(text):
        return True
    return _HEDGE_NO.search(rest) is not None


# --------------------------------------------------------------------------
# Normalisers.


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise UsageError(f"unknown answer kind {kind!r}; choose one of {', '.join(ANSWER_KINDS)}")


def _strip_latex_wrappers(value: str) -> str:
    """Unwrap ``\\text{...}``-style commands, repeatedly (for nesting)."""
    previous = None
    while previous != value:
        previous = value
        value = _LATEX_TEXT_WRAPPER.sub(lambda m: f" {m.group('body')} ", value)
    return value


def _clean_number_text(value: str) -> str:
    value = _strip_latex_wrappers(value)
    value = value.replace("\u2212", "-").replace("{,}", ",")
    value = _fix_latex_shorthand(value)
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


def _normalize_number(value: str) -> str | None:
    cleaned = _clean_number_text(value)
    match = _NUMBER_LITERAL.match(cleaned)
    if match is None or not _remainder_ok(cleaned[match.end():]):
        return None
    negative = match.group("sign") == "-"
    if match.group("fn") is not None:
        return _canonical_fraction(match.group("fn"), match.group("fd"), negative)
    if match.group("d") is not None:
        return _canonical_fraction(match.group("n"), match.group("d"), negative)
    return _canonical_decimal(match.group("n"), negative)


def _normalize_choice(value: str) -> str | None:
    cleaned = _strip_latex_wrappers(value)
    cleaned = re.sub(r"(?i)\A\s*(?:option|choice|letter)\b", "", cleaned)
    cleaned = cleaned.strip(" \t\r\n*()[]{}.:$")
    if len(cleaned) == 1 and cleaned.isascii() and cleaned.isalpha():
        return cleaned.upper()
    return None


def _normalize_yesno(value: str) -> str | None:
    word = _strip_latex_wrappers(value).strip(" \t\r\n*()[]{}.:!,;$\"'").lower()
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


def _fix_latex_shorthand(value: str) -> str:
    """Expand LaTeX shorthand: ``\\frac43`` -> ``\\frac{4}{3}``, ``\\sqrt2`` -> ``\\sqrt{2}``.

    As ``fix_fracs`` / ``fix_sqrt`` in the MATH benchmark's ``is_equiv``
    (Hendrycks et al. 2021); ``\\dfrac`` and ``\\tfrac`` become ``\\frac``.
    """
    value = _DFRAC.sub(r"\\frac", value)
    value = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", value)
    value = _FRAC_SHORT_FIRST.sub(r"\\frac{\1}", value)
    value = _FRAC_SHORT_SECOND.sub(r"\\frac\1{\2}", value)
    return _SQRT_SHORT.sub(r"\\sqrt{\1}", value)


def _math_canonical_once(value: str) -> str:
    value = _fix_latex_shorthand(_strip_latex_wrappers(value))
    value = _LATEX_COSMETIC.sub("", value)
    return "".join(value.lower().split()).rstrip(".")


def _math_canonical(value: str) -> str:
    """Math compared as written, minus case, whitespace, sizing and ``$`` (to a fixed point)."""
    previous = None
    while previous != value:
        previous, value = value, _math_canonical_once(value)
    return value


def _normalize_text(value: str) -> str | None:
    """Short free text, SQuAD style; math kept exact up to case, spacing and ``$``.

    SQuAD's rule would turn ``-2 + 7i`` into ``2 + 7i`` and ``3, 5, 7`` into
    ``3 5 7``, so text that looks like math (LaTeX, an operator, a minus or a
    comma between operands) only loses case, whitespace, ``\\left``/``\\right``,
    spacing commands, ``$`` and a trailing period. If that leaves nothing
    math-like (``\\left(3\\right)`` -> ``(3)``) the SQuAD rule applies.
    """
    text = _strip_latex_wrappers(value)
    if _looks_like_math(text):
        text = _math_canonical(text)
        if _looks_like_math(text):
            return text or None
    text = _squad_normalize(text)
    if _looks_like_math(text):  # SQuAD keeps symbols such as "+" and "="
        text = _math_canonical(text)
    return text or None


def _normalize_auto(value: str) -> str | None:
    """A number when ``value`` (or its text form, e.g. ``"0/0"`` -> ``"00"``) reads as one."""
    number = _normalize_number(value)
    if number is not None:
        return number
    text = _normalize_text(value)
    if text is None:
        return None
    number = _normalize_number(text)
    return text if number is None else number


_NORMALIZERS: Mapping[str, Callable[[str], str | None]] = MappingProxyType(
    {
        "number": _normalize_number,
        "choice": _normalize_choice,
        "yesno": _normalize_yesno,
        "text": _normalize_text,
        "auto": _normalize_auto,
    }
)


# --------------------------------------------------------------------------
# Braces.


def _matching_braces(text: str) -> dict[int, int]:
    """Map each ``{`` index to its matching ``}`` index; backslash escapes skipped."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _box_argument(
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


def _probe_content_end(text: str) -> int:
    """Index of the ``}`` closing an already-open ``{``, else of the first newline, else len."""
    depth = 1
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    newline = text.find("\n")
    return n if newline < 0 else newline


def _trimmed(text: str, start: int, end: int) -> tuple[str, tuple[int, int]]:
    """``text[start:end]`` without surrounding whitespace, with its span."""
    end = min(end, len(text))
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return text[start:end], (start, end)


def _make(text: str, span: tuple[int, int], kind: str) -> Extracted | None:
    raw = text[span[0] : span[1]]
    value = _NORMALIZERS[kind](raw)
    return None if value is None else Extracted(value, raw, span)


# --------------------------------------------------------------------------
# number


def _number_at(text: str, pos: int) -> Extracted | None:
    match = _NUMBER_TOKEN.match(text, pos)
    return None if match is None else _make(text, match.span(), "number")


def _gsm8k_number(text: str) -> Extracted | None:
    for mark in reversed(list(_GSM8K_MARK.finditer(text))):
        found = _number_at(text, mark.end())
        if found is not None:
            return found
    return None


def _boxed_number(text: str) -> Extracted | None:
    closing = _matching_braces(text)
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        box = _box_argument(text, match.end(), closing)
        if box is not None:
            raw, span = _trimmed(text, *box[1])
            found = _make(text, span, "number") if raw else None
            if found is not None:
                return found
    return None


def _number_after(text: str, pos: int) -> Extracted | None:
    """The first number after ``pos`` in the same sentence, at most ``_GAP_LIMIT`` chars on."""
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    start, last_start = pos, min(line_end, pos + _GAP_LIMIT + 1)
    while start < last_start:  # only token starts inside the gap are tried: linear time
        match = _NUMBER_TOKEN.match(text, start, line_end)
        if match is None:
            start += 1
            continue
        if _SENTENCE_END.search(text, pos, match.start()):
            return None
        found = _make(text, match.span(), "number")
        if found is not None:
            return found
        start = max(match.end(), start + 1)
    return None


def _phrase_number(text: str) -> Extracted | None:
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        found = _number_after(text, phrase.end())
        if found is not None:
            return found
    return None


def _last_number(text: str) -> Extracted | None:
    for match in reversed(list(_NUMBER_TOKEN.finditer(text))):
        found = _make(text, match.span(), "number")
        if found is not None:
            return found
    return None


def _extract_number(text: str) -> Extracted | None:
    for finder in (_gsm8k_number, _boxed_number, _phrase_number, _last_number):
        found = finder(text)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------
# choice


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
    raw, span = _trimmed(text, *box[1])
    found = _make(text, span, "choice") if raw else None
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


def _extract_choice(text: str, choices: Sequence[str] | None) -> Extracted | None:
    letters = _choice_letters(choices)
    found = _boxed_choice(text, letters) or _phrase_choice(text, letters)
    if found is not None:
        return found
    for pattern in (_LETTER_LINE, _LETTER_START, _LETTER_BOLD, _LETTER_PAREN, _LETTER_HALF_PAREN):
        found = _pattern_choice(text, pattern, letters)
        if found is not None:
            return found
    return _text_choice(text, choices)


# --------------------------------------------------------------------------
# yes / no


def _boxed_as(text: str, kind: str) -> Extracted | None:
    box = last_boxed(text)
    if box is None:
        return None
    raw, span = _trimmed(text, *box[1])
    return _make(text, span, kind) if raw else None


def _word_match(text: str, match: re.Match[str] | None) -> Extracted | None:
    return None if match is None else _make(text, match.span("word"), "yesno")


def _extract_yesno(text: str) -> Extracted | None:
    found = _boxed_as(text, "yesno")
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


def _phrase_text_span(text: str, pos: int) -> tuple[int, int]:
    """From ``pos`` to the end of its line, cut at the first sentence end."""
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    sentence = _SENTENCE_END.search(text, pos, line_end)
    end = sentence.start() if sentence is not None else line_end
    return _trimmed(text, pos, end)[1]


def _text_after(text: str, phrase: re.Match[str], kind: str) -> Extracted | None:
    span = _phrase_text_span(text, phrase.end())
    return _make(text, span, kind) if span[1] > span[0] else None


def _phrase_text(text: str) -> Extracted | None:
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        found = _text_after(text, phrase, "text")
        if found is not None:
            return found
    return None


def _first_line(text: str, kind: str) -> Extracted | None:
    """The first line whose content normalises to a valid ``kind`` answer."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        raw, span = _trimmed(text, start, end)
        found = _make(text, span, kind) if raw else None
        if found is not None:
            return found
        start = end + 1
    return None


def _extract_text(text: str) -> Extracted | None:
    return _boxed_as(text, "text") or _phrase_text(text) or _first_line(text, "text")


def _phrase_auto(text: str) -> Extracted | None:
    """The last answer phrase: the number right after it, else the text after it."""
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        found = _number_after(text, phrase.end()) or _text_after(text, phrase, "auto")
        if found is not None:
            return found
    return None


def _extract_auto(text: str) -> Extracted | None:
    return (
        _boxed_as(text, "auto")
        or _gsm8k_number(text)
        or _phrase_auto(text)
        or _last_number(text)
        or _first_line(text, "auto")
    )
