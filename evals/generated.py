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
add-1d      two one-digit numbers, plus: every sum once per 100 items  number
arith-1d    two one-digit numbers: plus, minus (never negative), times  number
arith-2d    two two-digit numbers: plus or minus (never negative)      number
==========  =========================================================  ======

Phrasings vary per item ("What is 6 plus 3?", "Compute 6 + 3.", a one-line word
problem ...), each ending with "Answer with a number." as the strategy issue's set did.

``add-1d`` is the easy set, where a small model's answers concentrate: items 0 to
99 are the 100 ordered pairs of one-digit numbers, shuffled, all asked as "What is
a plus b?" (the issue's phrasing); each further block of 100 asks every pair again
in the next phrasing. A tuning split (offset 100) and a report split (offset 0) thus
hold the same sums in different words.

Every item carries :data:`SHOTS` worked examples (drawn from their own stream, not
from the set; add-1d's with two-digit numbers, since every one-digit sum is in it)
for ``--prompt-style few-shot``, in the form the number instruction asks for
("6 + 3 = 9. The answer is 9."), which base models such as Gemma 3 270M need.
"""

from __future__ import annotations

import random

from edgescale.evals.items import Item

SEED = 20261130
SIZE = 1000  # items per set; a prefix is taken (limit / offset)
SHOTS = 3
ADD_SIZE = 500  # add-1d: the 100 pairs in each of its five phrasings

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
    return _ask(text)


def _ask(text: str) -> str:
    return f"{text} Answer with a number."


def _exemplars(name: str, ops: tuple[str, ...], lo: int, hi: int) -> tuple[tuple[str, str], ...]:
    rng = random.Random(f"{name}:shots:{SEED}")
    shots = []
    for i in range(SHOTS):
        op = ops[i % len(ops)]
        a, b = sorted((rng.randint(lo, hi), rng.randint(lo, hi)), reverse=op == "minus")
        result = _OPS[op][0](a, b)
        shots.append((_question(rng, a, b, op), f"{a} {_OPS[op][1]} {b} = {result}. The answer is {result}."))
    return tuple(shots)


def _additions(count: int) -> list[Item]:
    rng = random.Random(f"add-1d:{SEED}")
    fewshot = _exemplars("add-1d", ("plus",), 10, 19)  # every one-digit sum is in the set: none as an example
    phrasings = (*_PHRASINGS, _STORIES["plus"])
    items: list[Item] = []
    for phrasing in phrasings:
        pairs = [(a, b) for a in range(10) for b in range(10)]
        rng.shuffle(pairs)
        for a, b in pairs:
            if len(items) == count:
                return items
            text = phrasing.format(a=a, b=b, word="plus", sign="+")
            items.append(Item(id=f"add-1d-{len(items)}", question=_ask(text),
                              answer=str(a + b), kind="number", fewshot=fewshot))
    return items


def arithmetic(name: str, count: int | None) -> list[Item]:
    """The first ``count`` items (all of the set for None) of set ``name``."""
    if name == "add-1d":
        return _additions(ADD_SIZE if count is None else min(count, ADD_SIZE))
    digits, ops = {"arith-1d": (1, ("plus", "minus", "times")), "arith-2d": (2, ("plus", "minus"))}[name]
    lo, hi = (0, 9) if digits == 1 else (10, 99)
    fewshot = _exemplars(name, ops, lo, hi)
    rng = random.Random(f"{name}:{SEED}")
    items = []
    for i in range(SIZE if count is None else min(count, SIZE)):
        op = ops[i % len(ops)]
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "minus" and b > a:
            a, b = b, a
        items.append(Item(id=f"{name}-{i}", question=_question(rng, a, b, op), answer=str(_OPS[op][0](a, b)),
                          kind="number", fewshot=fewshot))
    return items
