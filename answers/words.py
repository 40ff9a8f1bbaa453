"""Numbers written in English words: "eleven", "twenty-one", "a dozen", "three hundred and five".

Private helper of :mod:`edgescale.answers.numbers`. Whole numbers from zero
to the millions: units and teens, tens (a unit may follow, with a hyphen or a space),
"hundred", "thousand", "million" (each may be preceded by "a"), "dozen" (12 times
what precedes it, or "a dozen"), and "and" between parts ("one hundred and five").
Ordinals and fractions ("third", "half") are not numbers here, and neither is a run
of words that does not read as one number ("five six", "twenty thirty").
"""

from __future__ import annotations

import re

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 1000, "million": 1_000_000}
_WORDS = sorted([*_UNITS, *_TENS, *_SCALES, "hundred", "dozen"], key=len, reverse=True)
_WORD = "(?:" + "|".join(_WORDS) + ")"
# "a" only before a multiplier; "and" only between two number words
WORD_NUMBER = re.compile(
    rf"(?<![\w-])(?:an?[ \t]+(?=(?:hundred|thousand|million|dozen)\b))?{_WORD}"
    rf"(?:(?:[ \t]*-[ \t]*|[ \t]+(?:and[ \t]+)?){_WORD})*(?![\w-])",
    re.IGNORECASE,
)


def words_to_int(text: str) -> int | None:
    """The whole number ``text`` spells out in full, else ``None``."""
    words = [w for w in re.split(r"[\s-]+", text.strip().lower()) if w]
    if words and words[0] in ("a", "an"):
        if len(words) < 2 or words[1] not in ("hundred", "thousand", "million", "dozen"):
            return None
        words = ["one", *words[1:]]
    total, group, last = 0, 0, ""  # last: the kind of the previous word
    prev_scale = float("inf")
    for i, w in enumerate(words):
        if w == "and":
            if last not in ("hundred", "scale") or i == len(words) - 1:
                return None
            continue
        if w in _UNITS:
            n = _UNITS[w]
            # after tens only 1-9; after a unit or a teen nothing but a multiplier
            if last in ("unit",) or (last == "tens" and not 1 <= n <= 9):
                return None
            group += n
            last = "unit"
        elif w in _TENS:
            if last in ("unit", "tens") or group % 100:
                return None
            group += _TENS[w]
            last = "tens"
        elif w == "hundred":
            if last not in ("unit", "tens") or not 0 < group < 100:
                return None
            group *= 100
            last = "hundred"
        elif w == "dozen":
            if last != "unit" or group == 0:
                return None
            group *= 12
            last = "hundred"
        elif w in _SCALES:
            if last in ("", "scale") or group == 0 or _SCALES[w] >= prev_scale:
                return None
            total += group * _SCALES[w]
            group, prev_scale = 0, _SCALES[w]
            last = "scale"
        else:
            return None
    if last == "":
        return None
    return total + group

