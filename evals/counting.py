"""Generated sets where a small model's answers spread, deterministic from a seed (no data files).

==============  ===========================================================  ======
name            what                                                         kind
==============  ===========================================================  ======
count-objects   BIG-bench object counting's form: "I have a flute, two        number
                pianos, a cabbage and a trumpet. How many musical
                instruments do I have?" (3 to 5 things of the asked kind,
                1 to 3 of each, 0 to 2 of another kind)
arith-3         three one-digit numbers, two of plus, minus, times, with the  number
                usual precedence ("What is 7 - 2 x 3?"), never negative
==============  ===========================================================  ======

The packaged models sit well below half on both (SmolLM2-135M: about one question in
six on counting), and their samples give many different answers: the sets where
adaptive sampling cannot reach a confident vote. Item ``i`` is the same on every machine
for :data:`SEED` and the word lists (change either, and the set's name should change).
"""

from __future__ import annotations

import random

from edgescale.evals.items import Item

SEED = 20261207
SIZE = 1000
SHOTS = 3

# (singular with its article, plural) per kind; the question asks for the kind's plural noun
_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "fruits": (("an apple", "apples"), ("a banana", "bananas"), ("an orange", "oranges"), ("a peach", "peaches"),
               ("a plum", "plums"), ("a grape", "grapes"), ("a strawberry", "strawberries"),
               ("a nectarine", "nectarines"), ("a raspberry", "raspberries"), ("a blackberry", "blackberries")),
    "vegetables": (("a carrot", "carrots"), ("a potato", "potatoes"), ("an onion", "onions"),
                   ("a cabbage", "cabbages"), ("a head of lettuce", "heads of lettuce"), ("a yam", "yams"),
                   ("a stalk of celery", "stalks of celery"), ("a cauliflower", "cauliflowers"),
                   ("a garlic", "garlics"), ("a head of broccoli", "heads of broccoli")),
    "animals": (("a dog", "dogs"), ("a cat", "cats"), ("a rabbit", "rabbits"), ("a goat", "goats"), ("a cow", "cows"),
                ("a pig", "pigs"), ("a chicken", "chickens"), ("a duck", "ducks"), ("a snake", "snakes"),
                ("a mouse", "mice"), ("a frog", "frogs"), ("a donkey", "donkeys")),
    "musical instruments": (("a piano", "pianos"), ("a flute", "flutes"), ("a trumpet", "trumpets"),
                            ("a violin", "violins"), ("a drum", "drums"), ("a clarinet", "clarinets"),
                            ("a trombone", "trombones"), ("an accordion", "accordions")),
    "objects": (("a chair", "chairs"), ("a table", "tables"), ("a bed", "beds"), ("a lamp", "lamps"),
                ("a couch", "couches"), ("a car", "cars"), ("a stove", "stoves"), ("a microwave", "microwaves"),
                ("an oven", "ovens"), ("a fridge", "fridges")),
}
_NUMBER_WORDS = {2: "two", 3: "three"}
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
_ARITH_PHRASINGS = ("What is {e}?", "Compute {e}.", "How much is {e}?", "{e} equals what?")


def _ask(text: str) -> str:
    return f"{text} Answer with a number."


def _listing(things: list[str]) -> str:
    return ", ".join(things[:-1]) + f", and {things[-1]}" if len(things) > 1 else things[0]


def _counting_question(rng: random.Random) -> tuple[str, int]:
    kind = rng.choice(sorted(_KINDS))
    n_target = rng.randint(3, 5)
    picked = rng.sample(_KINDS[kind], n_target)
    counts = [rng.choice((1, 1, 2, 3)) for _ in picked]
    other = rng.choice(sorted(k for k in _KINDS if k != kind))
    distractors = rng.sample(_KINDS[other], rng.randint(0, 2))
    things = [one if c == 1 else f"{_NUMBER_WORDS[c]} {many}" for (one, many), c in zip(picked, counts)]
    things += [one for one, _ in distractors]
    rng.shuffle(things)
    return _ask(f"I have {_listing(things)}. How many {kind} do I have?"), sum(counts)


def _arith3_question(rng: random.Random) -> tuple[str, int]:
    while True:
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        op1, op2 = rng.choice(tuple(_OPS)), rng.choice(tuple(_OPS))
        if op2 == "x" and op1 != "x":  # a op1 (b x c)
            value = _OPS[op1](a, b * c)
        else:  # (a op1 b) op2 c
            value = _OPS[op2](_OPS[op1](a, b), c)
        if value >= 0 and not (op1 == op2 == "x"):
            return _ask(rng.choice(_ARITH_PHRASINGS).format(e=f"{a} {op1} {b} {op2} {c}")), value


_MAKERS = {"count-objects": _counting_question, "arith-3": _arith3_question}
_WORKED = {"count-objects": "Counting them: {n}. The answer is {n}.", "arith-3": "{n}. The answer is {n}."}


def generated_set(name: str, count: int | None) -> list[Item]:
    """The first ``count`` items (all of the set for None) of set ``name``."""
    make = _MAKERS[name]
    shots_rng = random.Random(f"{name}:shots:{SEED}")
    fewshot = tuple((q, _WORKED[name].format(n=n)) for q, n in (make(shots_rng) for _ in range(SHOTS)))
    rng = random.Random(f"{name}:{SEED}")
    items = []
    for i in range(SIZE if count is None else min(count, SIZE)):
        question, answer = make(rng)
        items.append(Item(id=f"{name}-{i}", question=question, answer=str(answer), kind="number", fewshot=fewshot))
    return items
