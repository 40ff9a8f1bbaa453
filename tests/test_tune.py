"""auto's policy: fitting it (pure replay over records), storing it, planning with it, and
`edgescale tune` / `--policy` end to end on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgescale.errors import UsageError
from edgescale.evals.tune import cross_validate, fit_policy, policy_of
from edgescale.strategies.planner import Budget, QueryShape, plan
from edgescale.strategies.policy import DEFAULT_POLICY, AutoPolicy, load_policy, policy_path, save_policy
from edgescale.strategies.spec import Adaptive, Confidence, Escalate, parse_strategy
from tests.test_planner import CPU, SMOL


def stage1(i: int, correct: bool, certainty: float | None, *, agreed: bool = False, answered: bool = True,
           tokens: int = 10) -> dict[str, Any]:
    return {"item_id": f"q{i}", "correct": correct, "answer": "1" if answered else None,
            "result": {"stop_reason": "probes-agreed" if agreed else "all-finished",
                       "stats": {"total_tokens": tokens}, "plan": {"stage1_certainty": certainty}}}


def cand(i: int, correct: bool, tokens: int = 100) -> dict[str, Any]:
    return {"item_id": f"q{i}", "correct": correct, "answer": "1", "result": {"stats": {"total_tokens": tokens}}}


def test_escalating_the_unsure_questions_is_chosen_when_it_pays() -> None:
    # 20 sure answers (certainty >= 0.9) are right; 20 unsure ones wrong, and the candidate gets them right
    certs = [0.9 + i / 200 for i in range(20)] + [0.2 + i / 50 for i in range(20)]
    first = [stage1(i, c >= 0.9, c) for i, c in enumerate(certs)]
    fit = fit_policy(first, {"adaptive:max=8": [cand(i, True) for i in range(40)]})
    assert fit.stage1.correct == 20 and fit.best.correct == 40 and fit.best.escalated == 20
    # the cheapest within noise of the best (one paired standard error: here one question)
    assert fit.chosen.correct >= 39 and fit.chosen.escalated <= 20 and fit.chosen.threshold <= 0.9
    assert fit.chosen.tokens <= 10 + 20 * 100 / 40


def test_stage1_alone_when_escalation_wins_less_than_the_noise_margin() -> None:
    first = [stage1(i, i != 0, 0.5) for i in range(10)]
    fit = fit_policy(first, {"adaptive:max=8": [cand(i, True) for i in range(10)]}, min_gain=2)
    assert fit.best.correct == 10 and fit.chosen.escalation is None and fit.chosen.correct == 9
    policy = policy_of(fit, "t", "m.gguf", {"adaptive:max=8": Adaptive(max=8)}, {})
    assert policy.escalation is None and "stage 1 alone" in policy.describe()


def test_agreed_probes_and_missing_answers_decide_escalation_whatever_the_threshold() -> None:
    first = [stage1(i, True, 0.1, agreed=True) if i % 2 else stage1(i, False, 0.99, answered=False)
             for i in range(20)]
    fit = fit_policy(first, {"c": [cand(i, not i % 2) for i in range(20)]}, min_gain=1)
    assert fit.chosen.correct == 20 and fit.chosen.escalated == 10


def test_cross_validation_scores_each_fold_with_a_fit_on_the_others() -> None:
    # 50 questions: the candidate fixes the unsure (certainty < 0.5) ones, in every fold alike
    certs = [(i * 37 % 50) / 50 for i in range(50)]
    first = [stage1(i, c >= 0.5, c) for i, c in enumerate(certs)]
    records = [cand(i, True) for i in range(50)]
    held = cross_validate(first, "c", records, folds=5, min_gain=1)
    assert held.folds == 5 and held.n == 50 and len(held.fold_accuracy) == 5
    # by hand: fit on the four other folds, replay the chosen option on the held-out one
    correct, tokens = 0, 0.0
    for f in range(5):
        train = [i for i in range(50) if i % 5 != f]
        fit = fit_policy([first[i] for i in train], {"c": [records[i] for i in train]}, min_gain=1)
        for i in (i for i in range(50) if i % 5 == f):
            esc = fit.chosen.escalation is not None and certs[i] < fit.chosen.threshold
            correct += True if esc else certs[i] >= 0.5
            tokens += 10 + (100 if esc else 0)
    assert held.correct == correct and held.tokens == pytest.approx(tokens / 50)
    assert held.accuracy >= 0.9  # the threshold generalises here: every fold sees the same rule
    # a candidate that only looks good by luck: right on the questions of one fold only
    lucky = [cand(i, i % 5 == 0) for i in range(50)]
    assert cross_validate(first, "l", lucky, folds=5).correct <= held.correct


def test_records_of_other_questions_are_refused() -> None:
    with pytest.raises(UsageError, match="not for the same questions"):
        fit_policy([stage1(0, True, 0.5)], {"c": [cand(1, True)]})


def test_policies_round_trip_next_to_the_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pol = AutoPolicy("arith", 0.7, Adaptive(max=8, conf=0.9), model="m.gguf", fitted={"questions": 100})
    path = save_policy(pol)
    assert path == policy_path("m.gguf", "arith") == tmp_path / "edgescale" / "policies" / "m.gguf" / "arith.json"
    back = load_policy("m.gguf", "arith")
    assert back == pol and back.fitted == {"questions": 100} and back.id() == pol.id()
    with pytest.raises(UsageError, match="edgescale tune --task other"):
        load_policy("m.gguf", "other")
    with pytest.raises(UsageError, match="bad policy / task name"):
        load_policy("m.gguf", "../x")
    path.write_text(json.dumps({"task": "arith", "confidence": 0.7, "escalation": "maj@8"}))
    with pytest.raises(UsageError, match="adaptive or conf@k spec"):
        load_policy("m.gguf", "arith")


def auto_shape() -> QueryShape:
    return QueryShape(prompt_tokens=60, max_new_tokens=256, strategy=parse_strategy("auto"))


def test_the_planner_follows_the_policy() -> None:
    default = plan(auto_shape(), CPU, SMOL, Budget())
    assert isinstance(default.strategy, Escalate) and default.confidence == DEFAULT_POLICY.confidence
    tuned = plan(auto_shape(), CPU, SMOL, Budget(), AutoPolicy("t", 0.6, Adaptive(max=6, conf=0.9)))
    assert tuned.confidence == 0.6 and tuned.escalate_to.max == 6 and tuned.escalate_to.conf == 0.9
    assert any("policy 't'" in n for n in tuned.notes)
    never = plan(auto_shape(), CPU, SMOL, Budget(), AutoPolicy("t", 1.0, None))
    assert isinstance(never.strategy, Escalate) and never.strategy.escalation is None
    assert any("escalates never" in n for n in never.notes)


def test_a_policy_may_escalate_to_deepconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    save_policy(AutoPolicy("conf", 0.5, parse_strategy("conf@8:online=1"), model="m.gguf"))  # type: ignore[arg-type]
    policy = load_policy("m.gguf", "conf")
    assert policy.escalation == Confidence(k=8, online=True) and "conf@8:online=1" in policy.describe()
    p = plan(auto_shape(), CPU, SMOL, Budget(), policy)
    esc = p.escalate_to
    assert isinstance(esc, Confidence) and esc.k == 8 and esc.online and esc.warmup == 4
    assert p.escalate_wave_s is not None and p.predicted_peak_bytes
    small = plan(auto_shape(), CPU, SMOL, Budget(), AutoPolicy("t", 0.5, Confidence(k=3, online=True)))
    assert small.escalate_to == Confidence(k=3, online=True, warmup=3)  # the warm-up fits in k


CLI = [sys.executable, "-m", "edgescale.cli"]


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "EDGESCALE_THREADS": "2", "COLUMNS": "200"}
    env.pop("EDGESCALE_POLICY", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)  # four CLI runs, each allowed 600 s
def test_tune_then_policy_from_the_cli(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fit = cli("tune", "--dataset", "arith-1d", "--task", "arith", "--limit", "4", "--prompt-style", "bare",
              "--max-tokens", "12", "--candidates", "adaptive:max=4", "--min-gain", "0", "--json", cache=cache)
    assert fit.returncode == 0, fit.stderr
    saved = json.loads(fit.stdout)
    assert saved["task"] == "arith" and saved["fitted"]["questions"] == 4
    assert Path(saved["path"]).is_file() and saved["model"].endswith(".gguf")
    records = (cache / "edgescale" / "tune" / saved["model"] / "arith" / "results.jsonl").read_text().splitlines()
    assert len(records) == 8  # stage 1 and the candidate on 4 questions, resumable

    run = cli("run", "-s", "auto", "--policy", "arith", "--json", "--max-tokens", "12", "What is 2 plus 3?",
              cache=cache)
    assert run.returncode == 0, run.stderr
    notes = json.loads(run.stdout)["plan"]["notes"]
    assert any("policy 'arith'" in n for n in notes) and "no tuned policy" not in run.stderr
    untuned = cli("run", "-s", "auto", "--max-tokens", "12", "What is 2 plus 3?", cache=cache)
    assert untuned.returncode == 0 and "auto: no tuned policy" in untuned.stderr

    bench = cli("bench", "--dataset", "arith-1d", "--limit", "2", "--offset", "4", "--prompt-style", "bare",
                "--max-tokens", "12", "--strategies", "auto,auto:policy=arith", "--out", str(cache / "b"), cache=cache)
    assert bench.returncode == 0, bench.stderr
    specs = {r["strategy_spec"] for r in map(json.loads, (cache / "b" / "results.jsonl").read_text().splitlines())}
    assert specs == {f"auto:policy={saved['id']}", f"auto:policy={DEFAULT_POLICY.id()}"}

    missing = cli("run", "--policy", "nope", "-s", "auto", "What is 2 plus 3?", cache=cache)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "edgescale tune --task nope" in lines[0]


def test_auto_names_its_policy_in_the_spec() -> None:
    from edgescale.errors import InvalidSpec

    assert parse_strategy("auto:policy=arith").spec() == "auto:policy=arith"
    assert parse_strategy("auto").spec() == "auto"
    with pytest.raises(InvalidSpec, match="auto:policy=NAME"):
        parse_strategy("auto:k=3")


@pytest.mark.slow
def test_tune_runs_on_a_quantized_kv_cache_and_keeps_its_records_apart(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fit = cli("tune", "--dataset", "arith-1d", "--task", "arith-q8", "--limit", "2", "--prompt-style", "bare",
              "--max-tokens", "8", "--candidates", "adaptive:max=2,wave=1,window=1", "--min-gain", "0",
              "--kv-type", "q8_0", "--json", cache=cache)
    assert fit.returncode == 0, fit.stderr
    saved = json.loads(fit.stdout)
    lines = (cache / "edgescale" / "tune" / saved["model"] / "arith-q8" / "results.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["settings"]["kv_type"] == "q8_0" for line in lines)
    bad = cli("tune", "--dataset", "arith-1d", "--task", "x", "--kv-type", "q8_0/q3", cache=cache)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
