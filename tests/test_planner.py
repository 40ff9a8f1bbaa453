"""The planner as tables: budgets x device profiles -> plans (pure, no I/O)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from edgescale.devices.profile import DeviceProfile
from edgescale.errors import BudgetInfeasible
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.planner import (
    MEMORY_SAFETY,
    Budget,
    Plan,
    QueryShape,
    Timing,
    best_wave,
)
from edgescale.strategies.planner import plan as plan_with
from edgescale.strategies.policy import AutoPolicy
from edgescale.strategies.spec import Adaptive, Escalate, FirstFinish, Majority, ShortM, Single, parse_strategy

MB = 2**20
# auto's sizing is tested with a wide escalation (the hand-set rule before `edgescale tune`), so that
# waves, k_max and deadlines have room to differ; tests/test_tune.py covers the policies themselves
WIDE = AutoPolicy("wide", 0.8, Adaptive(max=16, conf=0.95))
AUTO_MAX_SAMPLES = 16


def plan(shape: QueryShape, profile: Timing | None, memory: MemoryModel, budget: Budget) -> Plan:
    return plan_with(shape, profile, memory, budget, WIDE)


def profile(steps: dict[int, float], prefill_tok_s: float = 1000.0) -> DeviceProfile:
    return DeviceProfile(model_key="m", backend="llama.cpp", backend_version="x", n_threads=2,
                         prefill_tok_s=prefill_tok_s, step_s=steps, created="2026-11-28T00:00:00+00:00")


# measured shapes: on this CPU batching helps little; on a GPU a lot
CPU = profile({1: 0.0088, 2: 0.014, 4: 0.027, 8: 0.0515, 16: 0.103})
GPU = profile({1: 0.010, 2: 0.0102, 4: 0.0104, 8: 0.0108, 16: 0.0115}, prefill_tok_s=20000.0)
SMOL = MemoryModel(fixed_bytes=166 * MB, kv_bytes_per_cell=23040.0,
                   compute_per_token=4 * (49152 + 4 * 576), logits_bytes_per_seq=4 * 49152)


def shape(spec: str, prompt: int = 60, new: int = 256) -> QueryShape:
    return QueryShape(prompt_tokens=prompt, max_new_tokens=new, strategy=parse_strategy(spec))


def test_best_wave_learns_batching_from_the_profile() -> None:
    assert best_wave(GPU, 16) == 16
    cpu = best_wave(CPU, 16)
    rate = {w: w / CPU.step_time(w) for w in (1, 2, 4, 8, 16)}
    assert rate[cpu] == max(rate.values()) or rate[cpu] * 1.05 >= max(rate.values())


@pytest.mark.parametrize("prof,wave", [(CPU, None), (GPU, 16)])
def test_auto_without_budget_escalates_to_adaptive(prof: DeviceProfile, wave: int | None) -> None:
    p = plan(shape("auto"), prof, SMOL, Budget())
    assert isinstance(p.strategy, Escalate) and p.first_stage.spec().startswith("early-exit") and p.k == 1
    esc = p.escalate_to
    assert esc.max == AUTO_MAX_SAMPLES
    assert esc.wave == (wave or best_wave(CPU, 16))
    assert p.confidence == 0.8


def test_auto_short_deadline_leaves_escalation_to_run_time() -> None:
    p = plan(shape("auto"), CPU, SMOL, Budget(deadline_s=1.0))
    esc = p.escalate_to
    assert esc.wave == best_wave(CPU, 16) and esc.max == AUTO_MAX_SAMPLES
    assert any("checked at run time" in n for n in p.notes)
    assert p.predicted_s == pytest.approx(60 / 1000 + 256 * CPU.step_time(1, 60 + 128), rel=1e-9)


def test_auto_deadline_sizes_k_max_to_the_time_left() -> None:
    p = plan(shape("auto"), GPU, SMOL, Budget(deadline_s=8.0))
    esc = p.escalate_to
    t1 = p.predicted_s
    per_wave = 256 * GPU.step_time(16)
    one = GPU.predict(prompt_tokens=60, k=16, new_tokens=256)
    assert t1 + one <= 8.0
    assert esc.max == min(16, max(2, (1 + int((8.0 - t1 - one) // per_wave)) * 16))
    assert p.escalate_predicted_s <= 8.0 - t1 + 1e-9


def test_memory_budget_lowers_k_of_a_fixed_strategy() -> None:
    budget = 200 * MB
    p = plan(shape("maj@8"), CPU, SMOL, Budget(memory_bytes=budget))
    k = p.k
    assert 1 <= k < 8 and p.strategy == Majority(k)
    assert p.predicted_peak_bytes <= budget * MEMORY_SAFETY
    assert any("memory budget allows" in n for n in p.notes)
    bigger = plan(shape(f"maj@{k + 1}"), CPU, SMOL, Budget())
    assert bigger.predicted_peak_bytes + 4 * 49152 > budget * MEMORY_SAFETY  # k+1 would not fit


def test_memory_budget_too_small_names_the_minimum() -> None:
    with pytest.raises(BudgetInfeasible) as err:
        plan(shape("single"), CPU, SMOL, Budget(memory_bytes=150 * MB))
    msg = str(err.value)
    assert "too small" in msg and "needs at least" in msg
    minimum = int(msg.split("needs at least ")[1].split(" MB")[0])
    assert minimum * MB > 166 * MB
    ok = plan(shape("single"), CPU, SMOL, Budget(memory_bytes=minimum * MB))
    assert ok.k == 1


def test_short_m_keeps_m_within_k() -> None:
    p = plan(shape("short-3@8"), CPU, SMOL, Budget(memory_bytes=200 * MB))
    assert isinstance(p.strategy, ShortM) and p.strategy.m <= p.strategy.k < 8


def test_fixed_strategy_over_deadline_is_noted_not_changed() -> None:
    p = plan(shape("maj@8"), CPU, SMOL, Budget(deadline_s=1.0))
    assert p.strategy == Majority(8)
    assert p.predicted_s > 1.0 and any("deadline will stop it" in n for n in p.notes)


def test_prediction_uses_batch_width() -> None:
    p8 = plan(shape("maj@8"), CPU, SMOL, Budget())
    p1 = plan(shape("single"), CPU, SMOL, Budget())
    assert p8.predicted_s / p1.predicted_s == pytest.approx(
        CPU.step_time(8, 188) / CPU.step_time(1, 188), rel=0.05)
    # n_cells: what the query may fill (what admission reserves); its own cache is padded
    assert p8.n_cells == 60 + 8 * 256 and p8.kv_bytes == SMOL.padded(p8.n_cells) * SMOL.kv_bytes_per_cell


def test_plan_is_pure() -> None:
    a = plan(shape("auto"), CPU, SMOL, Budget(deadline_s=5.0, memory_bytes=300 * MB))
    b = plan(shape("auto"), CPU, SMOL, Budget(deadline_s=5.0, memory_bytes=300 * MB))
    assert a == b and math.isfinite(a.predicted_s)


@pytest.mark.parametrize("memory_mb", [203, 209, 215, 260])
def test_auto_escalation_spec_is_valid_whatever_memory_allows(memory_mb: int) -> None:
    """k_max below the default window (4) must still give a spec that parses."""
    escalated = 0
    for prof in (CPU, GPU):
        for deadline in (None, 1.0, 30.0):
            p = plan(shape("auto"), prof, SMOL, Budget(memory_bytes=memory_mb * MB, deadline_s=deadline))
            assert p.predicted_peak_bytes <= memory_mb * MB * MEMORY_SAFETY
            esc = p.escalate_to
            if esc is None:  # only when memory leaves room for no second sample
                assert p.max_k_memory < 3 and any("too few samples" in n for n in p.notes)
                continue
            escalated += 1
            assert parse_strategy(esc.spec()) == esc
            assert esc.window <= esc.max and esc.wave <= esc.max
            assert esc.max + 1 <= p.max_k_memory  # stage 1's sample shares the batch
    assert escalated == 6 or memory_mb == 203


def test_auto_escalation_fits_the_model_context() -> None:
    """Stage 1's sample and the waves share one batch: all of it must fit the context."""
    long = QueryShape(prompt_tokens=60, max_new_tokens=1500, strategy=parse_strategy("auto"), context_cells=8192)
    p = plan(long, CPU, SMOL, Budget())
    esc = p.escalate_to
    assert 2 <= esc.max < AUTO_MAX_SAMPLES
    assert SMOL.kv_cells(prompt_tokens=60, n_seqs=esc.max + 1, new_tokens=1500, probe_slots=1,
                         probe_cells=36) <= 8192
    tiny = QueryShape(prompt_tokens=60, max_new_tokens=3000, strategy=parse_strategy("auto"), context_cells=4096)
    assert plan(tiny, CPU, SMOL, Budget()).escalate_to is None


def test_the_context_is_a_budget_too() -> None:
    """More cells than the model's context: fewer samples first, then fewer tokens, with a
    note; an error only when not even one token of one sample fits."""
    wide = QueryShape(prompt_tokens=60, max_new_tokens=2000, strategy=Majority(8), context_cells=8192)
    p = plan(wide, CPU, SMOL, Budget(deadline_s=1.0))
    assert p.strategy == Majority(p.k) and 1 < p.k < 8 and p.max_new_tokens == 2000
    assert p.n_cells <= 8192 and any("context (8192 cells) fits" in n for n in p.notes)
    long = QueryShape(prompt_tokens=60, max_new_tokens=10000, strategy=Single(), context_cells=8192)
    q = plan(long, None, SMOL, Budget())
    assert q.k == 1 and q.max_new_tokens < 10000 and q.n_cells <= 8192 and q.predicted_s is None
    with pytest.raises(BudgetInfeasible, match="leaves no room"):
        plan(QueryShape(prompt_tokens=8190, max_new_tokens=64, strategy=Single(), context_cells=8192), None,
             SMOL, Budget())


def test_exact_samples_are_refused_with_what_fits_never_cut() -> None:
    """OpenAI's n: the samples are the choices, so the planner says what fits instead of
    drawing fewer (context and memory alike)."""
    wide = QueryShape(prompt_tokens=60, max_new_tokens=2000, strategy=Majority(8), context_cells=8192,
                      exact_samples=True)
    with pytest.raises(BudgetInfeasible) as err:
        plan(wide, None, SMOL, Budget())
    msg = str(err.value)
    fits_k = int(msg.split("it fits ")[1].split(" sample")[0])
    most = int(msg.split("8 samples of at most ")[1].split(" tokens")[0])
    assert 1 <= fits_k < 8 and 1 <= most < 2000 and "\n" not in msg
    for strategy, new in ((Majority(fits_k), 2000), (Majority(8), most)):  # both suggestions fit, exactly
        ok = plan(replace(wide, strategy=strategy, max_new_tokens=new), None, SMOL, Budget())
        assert ok.strategy == strategy and ok.max_new_tokens == new and not ok.notes
    with pytest.raises(BudgetInfeasible):
        plan(replace(wide, strategy=Majority(8), max_new_tokens=most + 1), None, SMOL, Budget())
    with pytest.raises(BudgetInfeasible, match="memory budget allows"):
        plan(replace(shape("maj@8"), exact_samples=True), CPU, SMOL, Budget(memory_bytes=200 * MB))


def test_a_plan_holds_strategy_objects_and_prints_specs() -> None:
    p = plan(shape("auto"), CPU, SMOL, Budget(deadline_s=5.0))
    d = p.to_dict()
    assert d["strategy"] == p.first_stage.spec() and d["escalate_to"] == p.escalate_to.spec()
    assert d["confidence"] == p.confidence == 0.8 and d["profile_measured"] is True
    fixed = plan(shape("ffs@4"), None, SMOL, Budget())
    assert fixed.strategy == FirstFinish(4) and fixed.to_dict()["strategy"] == "ffs@4"
    assert fixed.predicted_s is None and fixed.profile_measured is None
