"""LaTeX clean-up shared by the answer normalisers.

Private helper of :mod:`edgescale.answers.extract`. Owns the two rewrites
that more than one answer kind applies before reading a value: unwrapping
``\\text{...}``-style commands and expanding ``\\frac43`` / ``\\sqrt2`` shorthand.
Kind-specific clean-up stays with its kind (number clean-up in
:mod:`~edgescale.answers.numbers`, math text in
:mod:`~edgescale.answers.text`).
"""

from __future__ import annotations

import re

_LATEX_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{(?P<body>[^{}]*)\}"
)
_DFRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
_FRAC_TWO_DIGITS = re.compile(r"\\frac\s*([0-9])\s*([0-9])")
_FRAC_SHORT_FIRST = re.compile(r"\\frac\s*([0-9A-Za-z])\s*(?=\{)")
_FRAC_SHORT_SECOND = re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*([0-9A-Za-z])")


def strip_latex_wrappers(value: str) -> str:
    """Unwrap ``\\text{...}``-style commands, repeatedly (for nesting)."""
    previous = None
    while previous != value:
        previous = value
        value = _LATEX_TEXT_WRAPPER.sub(lambda m: f" {m.group('body')} ", value)
    return value


def fix_latex_shorthand(value: str) -> str:
    """Expand LaTeX shorthand: ``\\frac43`` -> ``\\frac{4}{3}``, ``\\sqrt2`` -> ``\\sqrt{2}``.

    As ``fix_fracs`` / ``fix_sqrt`` in the MATH benchmark's ``is_equiv``
    (Hendrycks et al. 2021); ``\\dfrac`` and ``\\tfrac`` become ``\\frac``.
    """
    value = _DFRAC.sub(r"\\frac", value)
    value = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", value)
    value = _FRAC_SHORT_FIRST.sub(r"\\frac{\1}", value)
    value = _FRAC_SHORT_SECOND.sub(r"\\frac\1{\2}", value)
    return _SQRT_SHORT.sub(r"\\sqrt{\1}", value)
