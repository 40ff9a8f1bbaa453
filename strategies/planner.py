"""The planner: how much compute one query gets, as a pure function.

    plan(query, model, profile, memory, budget) -> Plan

No I/O: the device profile (measured step times), the memory model (what the
process needs besides the KV cache) and the budget are inputs, so the planner
is tested with tables.

Memory: peak = fixed (interpreter, libraries, the mapped weights) + compute
buffers (grow with the batch size llama.cpp is given) + logits rows (one per
sequence) + KV cells (prompt + k x new tokens + probe room, shared prompt cells
counted once) x bytes per cell. The largest k that fits is allowed; if not even
one sample of the requested length fits, BudgetInfeasible names the minimum.

Time: ``profile.predict`` (prefill + steps at batch k). A fixed strategy keeps
its k (memory may lower it) and the runtime enforces the deadline; the plan
says when the prediction exceeds it.

``auto`` escalates (the policy, documented so it can be argued with):
  1. cheap first: one greedy sample with early-exit probing (every 32 tokens,
     window 2), so an answer is ready early and a confident one stops early;
  2. read its confidence: an answer exists and either the probes agreed or the
     answer's tokens have a geometric-mean probability >= ``confidence`` (0.8);
  3. only when unsure, and when one more wave still fits the deadline, run
     adaptive sampling (Beta rule) with the greedy answer counted as one vote,
     in the same batch (the prompt is not read again);
     its wave width is the batch size with the best measured throughput on this
     device (on a CPU that is small, on a GPU large), and k_max the most samples
     that fit the memory and the time left (at most 16). Whether a wave fits is
     decided twice: here for the worst case (every sample runs to the token
     cap), which sizes k_max, and at run time from how long the first sample
     actually was, which decides whether to escalate at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from edgescale.errors import BudgetInfeasible
from edgescale.runtime.generate import batch_size
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    EarlyExit,
    FirstFinish,
    Majority,
    ShortM,
    Strategy,
)

AUTO_MAX_SAMPLES = 16
AUTO_CONFIDENCE = 0.8
AUTO_PROBE_EVERY = 32
PROBE_TOKENS = 20
CUE_TOKENS = 16  # room for the answer cue of a probe
MEMORY_SAFETY = 0.97  # plan to 97% of the budget: the Python heap moves a little
WAVE_CHOICES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class QueryShape:
    prompt_tokens: int
    max_new_tokens: int
    strategy: Strategy
    context_cells: int | None = None  # the model's context (KV cells one batch may hold at most)


@dataclass(frozen=True)
class Budget:
    """What one query may spend: wall time and memory (None = no limit)."""

    deadline_s: float | None = None
    memory_bytes: int | None = None


class Timing:
    """What the planner needs of a device profile (devices.profile.DeviceProfile fits)."""

    def predict(self, *, prompt_tokens: int, k: int, new_tokens: int) -> float: ...  # pragma: no cover

    def step_time(self, k: int, cells: float | None = None) -> float: ...  # pragma: no cover


@dataclass(frozen=True)
class Plan:
    strategy: str  # what runs first (a concrete spec)
    k: int  # sequences the first stage allocates
    max_new_tokens: int
    n_cells: int
    n_batch: int
    predicted_s: float
    predicted_peak_bytes: int
    kv_bytes: int
    escalate_to: str | None = None  # auto: the spec of stage 2 when stage 1 is unsure
    confidence: float | None = None  # auto: stage-1 certainty needed to stop
    escalate_predicted_s: float | None = None  # auto: stage 2 if every wave runs to max_new_tokens
    escalate_wave_s: float | None = None  # auto: one wave of stage 2 (needed time left to start it)
    max_k_memory: int = 0  # most samples the memory budget allows
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def _cells(memory: MemoryModel, prompt: int, k: int, new: int, probe_slots: int) -> int:
    return memory.kv_cells(prompt_tokens=prompt, n_seqs=k, new_tokens=new, probe_slots=probe_slots,
                           probe_cells=CUE_TOKENS + PROBE_TOKENS)


def _batch(prompt: int, k: int, probe_slots: int) -> int:
    return batch_size(prompt, k + probe_slots)


def max_samples_in_memory(shape: QueryShape, memory: MemoryModel, budget_bytes: int | None,
                          *, probe_slots: int = 1, limit: int = 64) -> int:
    """The most sequences of ``max_new_tokens`` that fit the memory budget (0 if none)."""
    if budget_bytes is None:
        return limit
    best = 0
    for k in range(1, limit + 1):
        need = memory.peak(
            n_seqs=k + probe_slots,
            n_cells=_cells(memory, shape.prompt_tokens, k, shape.max_new_tokens, probe_slots),
            n_batch=_batch(shape.prompt_tokens, k, probe_slots),
        )
        if need > budget_bytes * MEMORY_SAFETY:
            break
        best = k
    return best


def _infeasible(shape: QueryShape, memory: MemoryModel, budget_bytes: int) -> BudgetInfeasible:
    need = memory.peak(
        n_seqs=2, n_cells=_cells(memory, shape.prompt_tokens, 1, shape.max_new_tokens, 1),
        n_batch=_batch(shape.prompt_tokens, 1, 1),
    )
    minimum = math.ceil(need / MEMORY_SAFETY / 2**20)
    return BudgetInfeasible(
        f"memory budget {_mb(budget_bytes)} is too small: one sample of {shape.max_new_tokens} tokens after a "
        f"{shape.prompt_tokens}-token prompt needs at least {minimum} MB (model and runtime "
        f"{_mb(memory.fixed_bytes)}); raise --memory or lower --max-tokens"
    )


def _samples_of(strategy: Strategy) -> int:
    if isinstance(strategy, Adaptive):
        return strategy.max
    return int(getattr(strategy, "k", 1))


def _with_samples(strategy: Strategy, k: int) -> Strategy:
    if isinstance(strategy, Majority):
        return Majority(k)
    if isinstance(strategy, FirstFinish):
        return FirstFinish(k)
    if isinstance(strategy, ShortM):
        return ShortM(min(strategy.m, k), k)
    if isinstance(strategy, BestOfK):
        return BestOfK(k)
    if isinstance(strategy, Adaptive):
        return Adaptive(max=k, conf=strategy.conf, wave=min(strategy.wave, k), rule=strategy.rule,
                        window=min(strategy.window, k))
    if isinstance(strategy, EarlyExit):
        return EarlyExit(every=strategy.every, window=strategy.window, k=k, probe=strategy.probe)
    return strategy


def _parallel_width(strategy: Strategy) -> int:
    if isinstance(strategy, Adaptive):
        return strategy.wave
    return _samples_of(strategy)


def best_wave(profile: Timing, limit: int) -> int:
    """Batch width with the most tokens per second on this device (ties -> smaller)."""
    best, best_rate = 1, 0.0
    for w in WAVE_CHOICES:
        if w > limit:
            break
        rate = w / profile.step_time(w)
        if rate > best_rate * 1.05:  # a wider batch must buy at least 5%
            best, best_rate = w, rate
    return best


def plan(shape: QueryShape, profile: Timing, memory: MemoryModel, budget: Budget) -> Plan:
    """Choose strategy parameters, KV size and batch for one query within the budget."""
    if shape.prompt_tokens < 1 or shape.max_new_tokens < 1:
        raise BudgetInfeasible("a query needs a prompt and at least one new token")
    mem_k = max_samples_in_memory(shape, memory, budget.memory_bytes)
    if mem_k < 1:
        raise _infeasible(shape, memory, budget.memory_bytes or 0)
    if isinstance(shape.strategy, Auto):
        return _plan_auto(shape, profile, memory, budget, mem_k)
    return _plan_fixed(shape, profile, memory, budget, mem_k)


def _plan_fixed(shape: QueryShape, profile: Timing, memory: MemoryModel, budget: Budget, mem_k: int) -> Plan:
    notes: list[str] = []
    strategy = shape.strategy
    want = _samples_of(strategy)
    if want > mem_k:
        strategy = _with_samples(strategy, mem_k)
        notes.append(f"memory budget allows {mem_k} samples of {shape.max_new_tokens} tokens, not {want}")
    k = _samples_of(strategy)
    probes = k if isinstance(strategy, EarlyExit) else 1
    width = _parallel_width(strategy)
    waves = math.ceil(k / width) if isinstance(strategy, Adaptive) else 1
    predicted = profile.predict(prompt_tokens=shape.prompt_tokens, k=width, new_tokens=shape.max_new_tokens)
    predicted += (waves - 1) * shape.max_new_tokens * profile.step_time(width)
    if budget.deadline_s is not None and predicted > budget.deadline_s:
        notes.append(
            f"predicted {predicted:.1f}s if every sample runs to {shape.max_new_tokens} tokens; the "
            f"{budget.deadline_s:g}s deadline will stop it and answer from what has finished"
        )
    return _finish(shape, strategy, k, probes, predicted, memory, mem_k, notes)


def _finish(shape: QueryShape, strategy: Strategy, k: int, probes: int, predicted: float, memory: MemoryModel,
            mem_k: int, notes: list[str], **extra: Any) -> Plan:
    cells = _cells(memory, shape.prompt_tokens, k, shape.max_new_tokens, probes)
    n_batch = _batch(shape.prompt_tokens, k, probes)
    return Plan(
        strategy=strategy.spec(), k=k, max_new_tokens=shape.max_new_tokens, n_cells=cells, n_batch=n_batch,
        predicted_s=predicted, predicted_peak_bytes=memory.peak(n_seqs=k + probes, n_cells=cells, n_batch=n_batch),
        kv_bytes=int(memory.kv_bytes_per_cell * cells), max_k_memory=mem_k, notes=tuple(notes), **extra,
    )


def _escalation(k_max: int, wave: int) -> Adaptive:
    """auto's stage 2: the Beta rule at 0.95, waves and window no wider than k_max."""
    escalation = _with_samples(Adaptive(conf=0.95, wave=wave), k_max)
    assert isinstance(escalation, Adaptive)
    return escalation


def _plan_auto(shape: QueryShape, profile: Timing, memory: MemoryModel, budget: Budget, mem_k: int) -> Plan:
    notes: list[str] = []
    stage1 = EarlyExit(every=AUTO_PROBE_EVERY, window=2, k=1, probe=PROBE_TOKENS)
    t1 = profile.predict(prompt_tokens=shape.prompt_tokens, k=1, new_tokens=shape.max_new_tokens)
    k_cap = min(AUTO_MAX_SAMPLES, mem_k - 1)  # stage 1's sample stays in the batch
    if shape.context_cells is not None:
        while k_cap >= 2 and _cells(memory, shape.prompt_tokens, k_cap + 1, shape.max_new_tokens, 1) > \
                shape.context_cells:
            k_cap -= 1
    wave = min(best_wave(profile, k_cap), k_cap)
    one_wave = profile.predict(prompt_tokens=shape.prompt_tokens, k=wave, new_tokens=shape.max_new_tokens)
    escalate: Strategy | None = None
    t2: float | None = None
    if k_cap < 2:
        notes.append("memory or the model's context allows too few samples: no escalation")
    elif budget.deadline_s is None:
        escalate = _escalation(k_cap, wave)
        t2 = one_wave + (math.ceil(k_cap / wave) - 1) * shape.max_new_tokens * profile.step_time(wave)
    else:
        left = budget.deadline_s - t1
        if left < one_wave:
            # Sized for the worst case (every sample runs to max_new_tokens) not even one wave
            # fits; answers are usually much shorter, so the run decides once it has seen how
            # long the first sample took.
            escalate = _escalation(k_cap, wave)
            t2 = one_wave
            notes.append(
                f"if every sample ran to {shape.max_new_tokens} tokens there would be no time to escalate (the "
                f"first sample up to {t1:.1f}s, a wave of {wave} {one_wave:.1f}s, the deadline "
                f"{budget.deadline_s:g}s): escalates only if the first answer comes early enough for a wave "
                f"as long as it (checked at run time); the deadline stops the waves"
            )
        else:
            per_wave = shape.max_new_tokens * profile.step_time(wave)
            waves = 1 + int((left - one_wave) // per_wave) if per_wave > 0 else 1
            k_max = max(2, min(k_cap, waves * wave))
            escalate = _escalation(k_max, wave)
            t2 = one_wave + (math.ceil(k_max / wave) - 1) * per_wave
    peak2 = 0
    if escalate is not None:
        notes.append(f"escalates to {escalate.spec()} when the first answer's certainty is below "
                     f"{AUTO_CONFIDENCE:g} and its probes did not agree")
        k2 = _samples_of(escalate) + 1  # the waves and stage 1's sample, in one batch
        cells2 = _cells(memory, shape.prompt_tokens, k2, shape.max_new_tokens, 1)
        peak2 = memory.peak(n_seqs=k2 + 1, n_cells=cells2, n_batch=_batch(shape.prompt_tokens, k2, 1))
    first = _finish(
        shape, stage1, 1, 1, t1, memory, mem_k, notes,
        escalate_to=escalate.spec() if escalate is not None else None,
        confidence=AUTO_CONFIDENCE, escalate_predicted_s=t2,
        escalate_wave_s=one_wave if escalate is not None else None,
    )
    return replace(first, predicted_peak_bytes=max(first.predicted_peak_bytes, peak2))
