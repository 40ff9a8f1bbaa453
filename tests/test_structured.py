"""Structured output: constraints per sample in the batched loop, on both packaged models,
the answer tail, JSON votes, and the front ends' errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any, Iterator

import jsonschema
import pytest

from edgescale.answers.structured import answer_tail, canonical_json, extract_json, field_vote
from edgescale.api import Runtime
from edgescale.errors import UsageError
from edgescale.runtime.constraints import parse_constraint, response_format_constraint
from edgescale.scheduler.config import SchedulerConfig
from edgescale.strategies.spec import InvalidSpec, parse_strategy
from tests.scheduling import WAIT_S

MODELS = ["smollm2-135m", "gemma3-270m"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
CLI = [sys.executable, "-m", "edgescale.cli"]


@pytest.fixture(scope="module", params=MODELS)
def rt(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    with Runtime.load(request.param, threads=2) as runtime:
        yield runtime


# -- the constraint engine's front door (no model) ------------------------------------------
def test_a_bad_schema_names_where_it_is_wrong() -> None:
    with pytest.raises(UsageError, match=r"--json-schema: invalid JSON schema at properties/age/type: "):
        parse_constraint("json_schema", '{"properties": {"age": {"type": "int"}}}', where="--json-schema")
    with pytest.raises(UsageError, match=r"the schema is not JSON: .*line 1, column"):
        parse_constraint("json_schema", '{"type": ', where="--json-schema")
    with pytest.raises(UsageError, match=r"invalid or unsupported regex"):
        parse_constraint("regex", "[0-9")
    with pytest.raises(UsageError, match=r"choices must be a non-empty list"):
        parse_constraint("choices", " , ")
    with pytest.raises(UsageError, match=r"unknown constraint kind"):
        parse_constraint("xml", "<a/>")


def test_a_schema_feature_the_engine_cannot_enforce_is_named() -> None:
    with pytest.raises(UsageError, match=r'unsupported json schema: Unimplemented keys: \["uniqueItems"\]'):
        parse_constraint("json_schema", {"type": "object", "properties": {"tags": {"type": "array",
                                                                                    "uniqueItems": True}}})


def test_response_format_in_openai_and_edgescale_forms() -> None:
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int
        y: int

    assert response_format_constraint({"type": "text"}) is None
    assert response_format_constraint(None) is None
    assert response_format_constraint({"type": "json_object"}).kind == "json_object"  # type: ignore[union-attr]
    c = response_format_constraint({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert c is not None and c.kind == "json_schema" and c.name == "p" and c.schema == PERSON
    p = response_format_constraint(Point)
    assert p is not None and p.name == "Point" and p.schema is not None and set(p.schema["required"]) == {"x", "y"}
    assert response_format_constraint({"type": "choices", "choices": ["a", "b"]}).kind == "choices"  # type: ignore
    with pytest.raises(UsageError, match="json_schema needs an object with a 'schema'"):
        response_format_constraint({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(UsageError, match="unknown type 'xml'"):
        response_format_constraint({"type": "xml"})


def test_json_answers_vote_in_canonical_form_and_per_field() -> None:
    assert canonical_json('{"b": 2, "a": 1.0}') == canonical_json('{"a":1,"b":2}') == '{"a":1,"b":2}'
    assert canonical_json("{'a': 1}") is None
    assert extract_json('  {"a": [1, 2.5]} ').value == '{"a":[1,2.5]}'  # type: ignore[union-attr]
    assert extract_json('Here it is: {"a": 1} done').value == '{"a":1}'  # type: ignore[union-attr]
    answer, votes = field_vote(['{"a":1,"b":"x"}', '{"a":2,"b":"y"}', '{"a":1,"b":"y"}', '{"c":3}'])
    assert json.loads(answer) == {"a": 1, "b": "y"}  # type: ignore[arg-type]
    assert votes["a"] == {"1": 2, "2": 1} and "c" not in votes


def test_vote_fields_is_a_majority_option() -> None:
    assert parse_strategy("maj@8:vote=fields").spec() == "maj@8:vote=fields"
    with pytest.raises(InvalidSpec):
        parse_strategy("adaptive:vote=fields")


def test_answer_tail_grammars() -> None:
    assert answer_tail("choice", ["x", "y", "z"]).constraint.source == r" ?\(?(A|B|C)\)?\.?"
    assert answer_tail("number").lead.endswith("The answer is")
    with pytest.raises(ValueError):
        answer_tail("text")


# -- on the real models ---------------------------------------------------------------------
def test_schema_constrained_samples_are_all_valid(rt: Runtime) -> None:
    """104 samples (13 queries x maj@8) under a schema: every one complete and an instance."""
    samples = []
    for i in range(13):
        res = rt.ask(f"Invent person number {i + 1} and describe them as JSON.", strategy="maj@8",
                     response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
                     max_tokens=80, seed=i)
        assert res.valid is True and res.answer_kind == "json"
        jsonschema.validate(json.loads(res.answer), PERSON)  # type: ignore[arg-type]
        samples += res.samples
    assert len(samples) == 104
    for s in samples:
        assert s.finish_reason == "stop" and s.valid is True, s
        jsonschema.validate(json.loads(s.text), PERSON)
        assert s.answer == canonical_json(s.text)


def test_choices_and_regex_hold(rt: Runtime) -> None:
    res = rt.ask("What colour is the sky on a clear day?", strategy="maj@8", max_tokens=10,
                 response_format={"type": "choices", "choices": ["red", "green", "blue"]})
    assert res.valid and all(s.text in ("red", "green", "blue") and s.valid for s in res.samples)
    pattern = r"[A-Z][a-z]{1,10} is [0-9]{1,3} years old\."
    res = rt.ask("Write one sentence about someone's age.", strategy="maj@8", max_tokens=30,
                 response_format={"type": "regex", "regex": pattern})
    assert all(re.fullmatch(pattern, s.text) and s.valid for s in res.samples), [s.text for s in res.samples]


def test_max_tokens_inside_a_structure_is_not_valid(rt: Runtime) -> None:
    res = rt.ask("Describe a person as JSON.", response_format={"type": "json_schema",
                 "json_schema": {"name": "person", "schema": PERSON}}, max_tokens=4)
    (sample,) = res.samples
    assert sample.finish_reason == "length" and sample.valid is False
    assert res.valid is False and res.answer is None


def test_the_answer_tail_gives_every_finished_sample_an_answer(rt: Runtime) -> None:
    """Samples cut at their reasoning cap or ending without a number still answer: each ends
    'The answer is N' and votes (yes/no and choice questions too)."""
    for q, kind, pattern in (("What is 7 times 8? Explain your steps.", "number", r"-?[0-9]"),
                             ("What is 12 times 9? Explain your steps.", "number", r"-?[0-9]"),
                             ("Is the sun a star? Explain.", "yesno", r"([Yy]es|[Nn]o)")):
        tail = rt.ask(q, strategy="maj@8", answer=f"{kind}:tail", max_tokens=40, seed=1)
        for s in tail.samples:
            assert s.finish_reason in ("stop", "length")
            assert re.search(r"The answer is ?" + pattern, s.text) and s.answer is not None, s.text
        assert sum(tail.votes.values()) == 8


def test_probes_and_the_deadline_answer_decode_the_tail(rt: Runtime) -> None:
    from edgescale.strategies.planner import Budget

    res = rt.ask("What is 17 + 25? Explain your steps.", strategy="early-exit", answer="number:tail", max_tokens=200)
    assert res.probes and all(p.text.startswith("\n\nThe answer is") and p.answer is not None and not p.hedged
                              for p in res.probes)
    res = rt.ask("What is 17 + 25? Explain every step in great detail.", strategy="maj@4", answer="number:tail",
                 max_tokens=2000, budget=Budget(deadline_s=3.0))
    cut = [s for s in res.samples if s.finish_reason == "deadline"]
    assert res.answer is not None
    # cut before their tail ended: no answer read from half a reasoning (only the forced probe's)
    assert all(s.answer is None or s.answer_source == "probe" for s in cut)
    assert all(p.text.startswith("\n\nThe answer is") for p in res.probes)


def test_queries_with_different_constraints_share_a_step(rt: Runtime) -> None:
    """A JSON query, a regex query and a free one, k=8 each, in the same scheduler steps."""
    rt = Runtime(rt.engine, rt.model_name, scheduler=SchedulerConfig(max_running=3))  # no budget: the test
    # process may hold several models by now, and a budget counts the whole process
    steps: dict[str, set[int]] = {"json": set(), "regex": set(), "free": set()}

    def seen(name: str):  # type: ignore[no-untyped-def]
        return lambda gen, events: steps[name].add(rt.scheduler.stats.steps)

    try:
        reqs = [
            rt.request("Describe a person as JSON.", strategy="maj@8", max_tokens=60, on_step=seen("json"),
                       response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}),
            rt.request("Give a number.", strategy="maj@8", max_tokens=20, on_step=seen("regex"),
                       response_format={"type": "regex", "regex": "[0-9]{2,4}"}),
            rt.request("Say hello.", strategy="maj@8", max_tokens=20, on_step=seen("free")),
        ]
        js, rx, free = [f.result(timeout=WAIT_S) for f in rt.scheduler.submit_many(reqs)]
    finally:
        rt.scheduler.close(timeout=WAIT_S)
    assert steps["json"] & steps["regex"] & steps["free"]
    assert all(s.valid for s in js.samples) and all(re.fullmatch("[0-9]{2,4}", s.text) for s in rx.samples)
    assert free.valid is None and all(s.valid is None for s in free.samples)


def test_serve_takes_response_format_on_gemma() -> None:
    """The openai client's json_schema and parse() against a server of the other packaged model
    (tests/test_serve.py covers SmolLM2 and the errors)."""
    from openai import OpenAI
    from pydantic import BaseModel, Field

    from tests.serve_harness import ServerProcess

    class Pet(BaseModel):
        name: str = Field(max_length=16)
        legs: int = Field(ge=0, le=8)

    srv = ServerProcess(["-m", "gemma3-270m", "--threads", "2", "--parallel", "2"])
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        ask = [{"role": "user", "content": "Describe a pet as JSON."}]
        r = client.chat.completions.create(model="gemma3-270m", messages=ask, max_tokens=60, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)
        pet = client.chat.completions.parse(model="gemma3-270m", messages=ask, max_tokens=120, response_format=Pet)
        assert isinstance(pet.choices[0].message.parsed, Pet)
    finally:
        srv.stop()


# -- the CLI --------------------------------------------------------------------------------
def test_cli_flags_and_their_errors(tmp_path: Any) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    out = subprocess.run([*CLI, "run", "--json", "--json-schema", str(schema), "-n", "80", "A person as JSON."],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["valid"] is True
    jsonschema.validate(json.loads(res["text"]), PERSON)
    cut = subprocess.run([*CLI, "run", "--json-schema", str(schema), "-n", "3", "A person as JSON."],
                         capture_output=True, text=True, timeout=300)
    assert cut.returncode == 1 and "reached --max-tokens inside the structure" in cut.stderr
    for args, message in ((["--json-schema", '{"type": "objec"}'], "--json-schema: invalid JSON schema at type"),
                          (["--json-schema", str(tmp_path / "missing.json")], "--json-schema: cannot read"),
                          (["--regex", "(", "--choices", "a,b"], "give one output constraint"),
                          (["--answer", "text:tail"], "an answer tail needs the kind number, choice or yesno")):
        bad = subprocess.run([*CLI, "run", *args, "x"], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_batch_lines_carry_their_own_response_format() -> None:
    lines = [
        {"id": "j", "prompt": "A person as JSON.", "max_tokens": 80,
         "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
        {"id": "bad", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
        {"id": "c", "prompt": "Pick one.", "response_format": {"type": "choices", "choices": ["up", "down"]}},
        {"id": "free", "prompt": "Say hi.", "max_tokens": 8},
    ]
    out = subprocess.run([*CLI, "batch"], input="".join(json.dumps(x) + "\n" for x in lines),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "1 line(s) failed" in out.stderr  # the bad line; the others answer
    recs = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert recs["j"]["ok"] and recs["j"]["valid"] is True
    jsonschema.validate(json.loads(recs["j"]["text"]), PERSON)
    assert not recs["bad"]["ok"] and "json_schema needs an object with a 'schema' object" in recs["bad"]["error"]
    assert recs["c"]["text"] in ("up", "down") and recs["c"]["valid"] is True
    assert recs["free"]["valid"] is None
