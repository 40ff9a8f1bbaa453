"""Deadlines and memory budgets on the real default model. Deadlines are checked on the
scheduler's own clock, one that advances by a fixed time per decode (the mechanism, whatever
the machine's speed); what a deadline costs in wall time is bench/budgets.py's to measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgescale.api import Budget
from edgescale.devices.profile import cache_path, calibrate, engine_identity, save_profile
from edgescale.runtime.kv_types import KvType
from edgescale.strategies.result import Result
from tests.scheduling import WAIT_S, DecodeClock, scheduler_on

LONG = "Write a very long and detailed story about a lighthouse keeper and the sea."


def quick_profile(engine):
    """A real but short calibration (seconds): every k the planner asks about."""
    return calibrate(engine, ks=(1, 2, 4, 8, 16), new_tokens=4, prompt_tokens=16, long_prompt_tokens=0, repeats=1)


@pytest.fixture(scope="module")
def planned(engine):
    from edgescale.api import Runtime

    return Runtime(engine, "smollm2-135m", profile=quick_profile(engine))


def ask_timed(rt, prompt: str, **kwargs) -> Result:  # type: ignore[no-untyped-def]
    """``rt.ask`` on a scheduler whose clock advances 20 ms a decode (arrival at 0)."""
    clock = DecodeClock(step_s=0.02)
    with scheduler_on(clock.wrap(rt.engine), clock) as scheduler:
        return scheduler.submit(rt.request(prompt, arrival=clock(), **kwargs)).result(timeout=WAIT_S)


@pytest.mark.parametrize("spec", ["maj@4", "auto", "single"])
def test_one_second_deadline_on_a_ten_second_query(planned, spec: str) -> None:
    # 1500 tokens at 20 ms a step: 30 s; one second holds 50 decodes, probes included
    res = ask_timed(planned, LONG, strategy=spec, budget=Budget(deadline_s=1.0), max_tokens=1500, answer="text")
    assert res.stats.wall_s <= 1.0  # answered by the deadline, on the clock the scheduler plans with
    assert res.stop_reason.endswith("deadline")
    assert res.plan is not None and res.plan.profile_measured
    # an answer from a finished sample or a forced-answer probe (the winner's), or none
    assert res.answer == (res.samples[res.winner].answer if res.winner is not None else None)


def test_auto_records_its_plan_and_stages(planned) -> None:
    res = ask_timed(planned, "What is 2 + 3?", strategy="auto", budget=Budget(deadline_s=30), max_tokens=48,
                    answer="number")
    assert res.strategy == "auto" and res.plan.first_stage.spec().startswith("early-exit")
    outcome = res.outcome
    assert res.stop_reason.startswith(f"{outcome.name}:")
    # the stages are consistent with the outcome: only an escalation adds samples, and a
    # confident stop means the probes agreed or the answer was certain enough
    assert (outcome.name == "escalated") == (len(res.samples) > 1)
    assert outcome.name != "confident" or res.stop_reason.endswith("probes-agreed") or (
        outcome.stage1_certainty >= res.plan.confidence)
    assert res.to_dict()["plan"]["outcome"] == outcome.name
    assert res.stats.wall_s <= 30


@pytest.fixture(scope="module")
def cached_profile_env(tmp_path_factory, model_path: Path) -> dict[str, str]:
    """A profile cached where a subprocess with 1 thread will look for it."""
    from edgescale.runtime.llama_engine import LlamaCppEngine

    cache = tmp_path_factory.mktemp("xdg")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        with LlamaCppEngine.load(model_path, n_threads=1) as eng:
            key, backend, _, threads, layers = engine_identity(eng)
            save_profile(quick_profile(eng), cache_path(key, backend, threads, layers))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "EDGESCALE_THREADS": "1"}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgescale.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("budget_mb,spec", [(300, "maj@8"), (300, "auto"), (220, "maj@8")])
def test_measured_peak_rss_stays_within_the_memory_budget(cached_profile_env, budget_mb: int, spec: str) -> None:
    proc = run_cli(cached_profile_env, "run", "--json", "--memory", f"{budget_mb}MB", "-s", spec, "-n", "96",
                   "--seed", "3", "--ignore-eos", "--kv-type", "f16", LONG)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    # every sample ran its full 96 tokens: the KV the plan counted was filled, not spared by an early stop
    assert res["samples"] and all(s["n_tokens"] == 96 for s in res["samples"]), res["samples"]
    # auto reads the cached measured profile; a fixed strategy with a memory budget needs no timing
    assert res["plan"]["profile_measured"] is (True if spec == "auto" else None)
    assert "no measured speed profile" not in proc.stderr
    assert res["plan"]["predicted_peak_bytes"] <= budget_mb * 2**20
    assert res["stats"]["peak_rss_bytes"] <= budget_mb * 2**20, (res["plan"], res["stats"], proc.stderr)


def test_memory_budget_below_the_minimum_is_a_one_line_error(cached_profile_env) -> None:
    proc = run_cli(cached_profile_env, "run", "--memory", "60MB", "hi")
    assert proc.returncode == 7
    assert proc.stderr.count("\n") == 1 and "needs at least" in proc.stderr


def test_plan_command_json(cached_profile_env) -> None:
    proc = run_cli(cached_profile_env, "plan", "--json", "--deadline", "2s", "--memory", "512MB", "What is 17*3?")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["strategy"].startswith("early-exit") and p["predicted_s"] > 0
    assert p["predicted_peak_bytes"] <= 512 * 2**20


@pytest.mark.timeout(900)  # a kv cost measurement, a few plans and one run of 8 x 600 tokens on 1 thread
def test_auto_quantizes_the_cache_to_fit_the_plan_and_rss_stays_within_the_budget(
        cached_profile_env, model_path: Path) -> None:
    """The smallest budget (in 10 MB steps) where f16 fits only 4 of maj@8's samples: auto keeps
    all 8 in a q8_0 cache (measured here within its bound), and the process stays within it."""
    from edgescale.devices.kv_costs import save_kv_costs
    from edgescale.evals.quality import kv_type_cost
    from edgescale.runtime.llama_engine import LlamaCppEngine

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = cached_profile_env["XDG_CACHE_HOME"]
    try:
        with LlamaCppEngine.load(model_path, n_threads=1) as eng:
            costs = save_kv_costs(eng, {"q8_0": kv_type_cost(eng, "q8_0", max_tokens=512).to_dict()})
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old
    assert costs.refusal(KvType("q8_0", "q8_0")) is None  # within the stored bound

    def plan_of(budget_mb: int, kv_type: str) -> dict:
        proc = run_cli(cached_profile_env, "plan", "--json", "-s", "maj@8", "-n", "600", "--memory",
                       f"{budget_mb}MB", "--kv-type", kv_type, LONG)
        assert proc.returncode in (0, 7), proc.stderr  # 7: the budget fits not even one sample
        return json.loads(proc.stdout) if proc.returncode == 0 else {"k": 0}

    # a sample of 600 tokens is about 14 MB of f16 KV: f16 fits 4 over two or three 5 MB steps
    # The run plans from the RSS it measures after loading the model, `plan` from an estimate made
    # without loading it: the two differ by a little (the run's interpreter and libraries), so the
    # budget leaves auto's 8 samples 5 MB of room (auto fits 8 at 5 MB less too), as a user's would.
    start = next(mb for mb in range(200, 400, 10) if plan_of(mb, "f16")["k"] >= 4) - 5
    budget_mb = auto = None
    for mb in range(start, start + 40, 5):
        if plan_of(mb, "f16")["k"] == 4 and (chosen := plan_of(mb, "auto"))["k"] == 8 \
                and plan_of(mb - 5, "auto")["k"] == 8:
            budget_mb, auto = mb, chosen
            break
    assert budget_mb is not None and auto is not None, "no budget where f16 fits 4 samples and auto 8"
    assert auto["kv_type"]["kv_type"] == "q8_0" and "f16 fits 4" in auto["kv_type"]["why"]
    proc = run_cli(cached_profile_env, "run", "--json", "--memory", f"{budget_mb}MB", "-s", "maj@8", "-n", "600",
                   "--ignore-eos", "--seed", "3", LONG)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["kv_type"]["kv_type"] == "q8_0" and len(res["samples"]) == 8
    assert all(s["n_tokens"] == 600 for s in res["samples"])  # the whole KV the plan counted was filled
    assert res["stats"]["peak_rss_bytes"] <= budget_mb * 2**20, (res["plan"], res["stats"], proc.stderr)
