"""Number answers written in words (strategies/answer_words.py), in model text and gold."""

from __future__ import annotations

import pytest

from edgescale.answers.extract import extract, normalize


# -- numbers in words ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,expected", [
    ("eleven", "11"), ("Twenty-one", "21"), ("twenty one", "21"), ("a dozen", "12"), ("two dozen", "24"),
    ("three hundred and five", "305"), ("twelve hundred", "1200"), ("zero", "0"), ("Eleven.", "11"),
    ("two million three thousand four hundred", "2003400"), ("seven apples", "7"),
])
def test_number_words_normalize(raw: str, expected: str) -> None:
    assert normalize(raw, "number") == expected
    assert normalize(expected, "number") == expected


@pytest.mark.parametrize("raw", ["five six", "twenty thirty", "hundred", "a five", "one thousand million",
                                 "third"])
def test_runs_of_words_that_are_not_one_number(raw: str) -> None:
    assert normalize(raw, "number") is None


@pytest.mark.parametrize("text,expected", [
    ("6 plus 5 is eleven.", "11"),
    ("The answer is eleven.", "11"),
    ("The answer is one.", "1"),
    ("One of them has 7.", "7"),
    ("No idea, one moment.", None),  # the bare "one" is not an answer by position alone
    ("There are 3 cats and two dogs, 5 in all", "5"),
    ("The answer is one hundred and five dollars.", "105"),
    ("Twenty-one is my final answer", "21"),
])
def test_number_words_in_model_text(text: str, expected: str | None) -> None:
    got = extract(text, "number")
    assert (got.value if got is not None else None) == expected


def test_a_gold_answer_in_words_is_accepted() -> None:
    from edgescale.evals.items import gold

    assert gold("eleven", "number", "line 1") == "11"
