"""Generated arithmetic question sets, deterministic from a seed (no data files).

Small instruct models sit at chance on GSM8K, ARC and BoolQ, where no strategy can
show anything; on short arithmetic they are clearly above chance and below the
ceiling, which is where voting, first-finish and early exits differ. Each set is a
fixed sequence of items for its seed: item ``i`` is the same on every machine and
in every version that keeps :data:`SEED` and the phrasings (change either, and the
set's name should change too).

==========  =========================================================  ======
name        what                                                       kind
==========  =========================================================  ======
arith-1d    two one-digit numbers: plus, minus (never negative), times  number
arith-2d    two two-digit numbers: plus or minus (never negative)      number
==========  =========================================================  ======

Phrasings vary per item ("What is 6 plus 3?", "Compute 6 + 3.", a one-line word
problem ...), each ending with "Answer with a number." as the strategy issue's set did.
"""

from __future__ import annotations

import random

from edgescale.evals.items import Item

SEED = 20261130
SIZE = 1000  # items per set; a prefix is taken (limit / offset)

_OPS = {"plus": (lambda a, b: a + b, "+"), "minus": (lambda a, b: a - b, "-"), "times": (lambda a, b: a * b, "x")}
_PHRASINGS = (
    "What is {a} {word} {b}?",
    "Compute {a} {sign} {b}.",
    "How much is {a} {word} {b}?",
    "{a} {word} {b} equals what?",
)
_STORIES = {
    "plus": "Sam has {a} marbles and finds {b} more. How many marbles does Sam have now?",
    "minus": "Sam has {a} marbles and gives away {b}. How many marbles does Sam have left?",
    "times": "There are {a} boxes with {b} pencils in each. How many pencils are there in all?",
}


def _question(rng: random.Random, a: int, b: int, op: str) -> str:
    word, sign = op, _OPS[op][1]
    if rng.random() < 0.25:
        text = _STORIES[op].format(a=a, b=b)
    else:
        text = rng.choice(_PHRASINGS).format(a=a, b=b, word=word, sign=sign)
    return f"{text} Answer with a number."


def arithmetic(name: str, count: int | None) -> list[Item]:
    """The first ``count`` items (all :data:`SIZE` for None) of set ``name``."""
    digits, ops = {"arith-1d": (1, ("plus", "minus", "times")), "arith-2d": (2, ("plus", "minus"))}[name]
    lo, hi = (0, 9) if digits == 1 else (10, 99)
    rng = random.Random(f"{name}:{SEED}")
    items = []
    for i in range(SIZE if count is None else min(count, SIZE)):
        op = ops[i % len(ops)]
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "minus" and b > a:
            a, b = b, a
        items.append(Item(id=f"{name}-{i}", question=_question(rng, a, b, op), answer=str(_OPS[op][0](a, b)),
                          kind="number"))
    return items
