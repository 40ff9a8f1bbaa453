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
     answer's tokens have a geometric-mean probability >= the policy's
     ``confidence`` (default 0.952; ``edgescale tune`` fits one per model and task,
     see strategies/policy.py);
  3. only when unsure, and when one more wave still fits the deadline, run
     the policy's escalation in the same batch (the prompt is not read again):
     DeepConf (``conf@k``, its warm-up as the first wave; the default) on new
     samples, or adaptive sampling (Beta rule) with the greedy answer counted as one vote;
     its wave width is the batch size with the best measured throughput on this
     device (on a CPU that is small, on a GPU large), and k_max the most samples
     that fit the memory and the time left (at most the policy's max, 8 by
     default). A tuned policy may also say never to escalate. Whether a wave fits is
     decided twice: here for the worst case (every sample runs to the token
     cap), which sizes k_max, and at run time from how long the first sample
     actually was, which decides whether to escalate at all.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Protocol, Sequence

from edgescale import limits
from edgescale.errors import BudgetInfeasible, UsageError
from edgescale.runtime.generate import batch_size
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.controllers import plan_allocation
from edgescale.strategies.policy import AUTO_MAX_SAMPLES, DEFAULT_POLICY, AutoPolicy  # noqa: F401 (re-export)
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    Confidence,
    EarlyExit,
    Escalate,
    Escalation,
    Strategy,
    first_wave,
    samples_of,
    with_first_wave,
    with_samples,
)

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
    cue_tokens: int = CUE_TOKENS  # the probes' answer cue, as the engine tokenizes it
    exact_samples: bool = False  # the samples are the answer (OpenAI's n): refuse rather than draw fewer


@dataclass(frozen=True)
class Budget:
    """What one query may spend: wall time and memory (None = no limit)."""

    deadline_s: float | None = None
    memory_bytes: int | None = None


class Timing(Protocol):
    """What the planner needs of a device profile (devices.profile.DeviceProfile fits)."""

    @property
    def measured(self) -> bool: ...  # pragma: no cover  (False: an estimate (devices.estimate), not a measurement)

    def predict(self, *, prompt_tokens: int, k: int, new_tokens: int) -> float: ...  # pragma: no cover

    def step_time(self, k: int, cells: float | None = None) -> float: ...  # pragma: no cover


@dataclass(frozen=True)
class SharedTiming:
    """A device profile as a query sees it when it shares each step with ``others`` live
    sequences of other queries (the scheduler's load at admission)."""

    profile: Timing
    others: int

    @property
    def measured(self) -> bool:
        return self.profile.measured

    def step_time(self, k: int, cells: float | None = None) -> float:
        return self.profile.step_time(k + self.others, cells)

    def predict(self, *, prompt_tokens: int, k: int, new_tokens: int) -> float:
        alone = self.profile.predict(prompt_tokens=prompt_tokens, k=k, new_tokens=0)  # the prompt
        cells = prompt_tokens + new_tokens / 2
        return alone + new_tokens * self.step_time(k, cells)


@dataclass(frozen=True)
class Plan:
    """What a query will run: a concrete strategy (auto's is an :class:`Escalate`), its
    sample count and KV size, and what the planner predicts. Predictions are None for a
    query planned without a budget (no device profile is read then)."""

    strategy: Strategy
    k: int  # sequences the first stage allocates
    max_new_tokens: int
    n_cells: int  # KV cells the query may fill (every stage's samples and probes): what admission reserves
    n_batch: int
    predicted_s: float | None
    predicted_peak_bytes: int | None
    kv_bytes: int
    escalate_predicted_s: float | None = None  # auto: stage 2 if every wave runs to max_new_tokens
    escalate_wave_s: float | None = None  # auto: one wave of stage 2 (needed time left to start it)
    max_k_memory: int = 0  # most samples the memory budget allows
    notes: tuple[str, ...] = ()
    budget: Budget | None = None
    profile_measured: bool | None = None  # the predictions come from a measured device profile
    n_seq_ids: int = 0  # sequence ids the query takes (every stage's samples and probe slots)

    @property
    def escalate_to(self) -> Escalation | None:
        return self.strategy.escalation if isinstance(self.strategy, Escalate) else None

    @property
    def confidence(self) -> float | None:
        return self.strategy.confidence if isinstance(self.strategy, Escalate) else None

    @property
    def first_stage(self) -> Strategy:
        """What runs first: auto's stage 1, else the strategy itself."""
        return self.strategy.stage1 if isinstance(self.strategy, Escalate) else self.strategy

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["strategy"] = self.first_stage.spec()
        esc = self.escalate_to
        out["escalate_to"] = esc.spec() if esc is not None else None
        out["confidence"] = self.confidence
        out["notes"] = list(self.notes)
        return out


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def _context(memory: MemoryModel, prompt: int, k: int, new: int, probe_slots: int) -> int:
    """What the model's context must hold for k samples (their longest row, with streams)."""
    return memory.context_cells(prompt_tokens=prompt, n_seqs=k, new_tokens=new, probe_slots=probe_slots,
                                probe_cells=CUE_TOKENS + PROBE_TOKENS)


def _cells(memory: MemoryModel, prompt: int, k: int, new: int, probe_slots: int) -> int:
    return memory.kv_cells(prompt_tokens=prompt, n_seqs=k, new_tokens=new, probe_slots=probe_slots,
                           probe_cells=CUE_TOKENS + PROBE_TOKENS)


def _batch(prompt: int, k: int, probe_slots: int) -> int:
    return batch_size(prompt, k + probe_slots)


def max_samples_in_memory(shape: QueryShape, memory: MemoryModel, budget_bytes: int | None,
                          *, probe_slots: int = 1, limit: int = limits.MAX_SAMPLES) -> int:
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


def _parallel_width(strategy: Strategy) -> int:
    if isinstance(strategy, Adaptive):
        return strategy.wave
    return samples_of(strategy)


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


def plan(shape: QueryShape, profile: Timing | None, memory: MemoryModel, budget: Budget,
         policy: AutoPolicy | None = None) -> Plan:
    """Choose strategy parameters, KV size and batch for one query within the budget and
    the model's context. ``profile`` None: no time predictions (only for a fixed strategy
    without a deadline). ``policy``: what ``auto`` escalates to and when (default:
    :data:`~edgescale.strategies.policy.DEFAULT_POLICY`)."""
    if shape.prompt_tokens < 1 or shape.max_new_tokens < 1:
        raise BudgetInfeasible("a query needs a prompt and at least one new token")
    notes: list[str] = []
    shape = _fit_context(shape, memory, notes)
    mem_k = max_samples_in_memory(shape, memory, budget.memory_bytes)
    if mem_k < 1:
        raise _infeasible(shape, memory, budget.memory_bytes or 0)
    if profile is not None and not profile.measured:
        notes.append("times predicted from a conservative estimate of this device's speed; "
                     "`edgescale devices --calibrate` measures it")
    if isinstance(shape.strategy, Auto):
        if profile is None:
            raise ValueError("auto needs a device profile")
        chosen = _plan_auto(shape, profile, memory, budget, mem_k, notes, policy or DEFAULT_POLICY)
    else:
        if profile is None and budget.deadline_s is not None:
            raise ValueError("a deadline needs a device profile")
        chosen = _plan_fixed(shape, profile, memory, budget, mem_k, notes)
    return replace(chosen, profile_measured=profile.measured if profile is not None else None)


def _fit_context(shape: QueryShape, memory: MemoryModel, notes: list[str]) -> QueryShape:
    """Fewer samples, then fewer new tokens, until one batch fits the model's context;
    BudgetInfeasible only when not even one sample of one token does."""
    ctx = shape.context_cells
    if ctx is None:
        return shape
    probes = 1

    def fits(k: int, new: int) -> bool:
        return _context(memory, shape.prompt_tokens, k, new, probes) <= ctx

    if fits(samples_of(shape.strategy), shape.max_new_tokens):
        return shape
    if not fits(1, 1):
        raise BudgetInfeasible(
            f"the prompt ({shape.prompt_tokens} tokens) leaves no room in the model's context of {ctx} cells"
        )
    want = samples_of(shape.strategy)
    k = want
    while k > 1 and not fits(k, shape.max_new_tokens):
        k -= 1
    new = shape.max_new_tokens
    if shape.exact_samples and k < want:
        raise _context_refusal(shape, want, k, fits, ctx)
    while new > 1 and not fits(k, new):
        new = max(1, new * 7 // 8)
    strategy = shape.strategy if k == want else with_samples(shape.strategy, k)
    cut = []
    if k < want:
        cut.append(f"{k} samples, not {want}")
    if new < shape.max_new_tokens:
        cut.append(f"{new} new tokens each, not {shape.max_new_tokens}")
    notes.append(f"the model's context ({ctx} cells) fits {' and '.join(cut)}")
    return replace(shape, strategy=strategy, max_new_tokens=new)


def _context_refusal(shape: QueryShape, want: int, k: int, fits: Callable[[int, int], bool],
                     ctx: int) -> BudgetInfeasible:
    """Why ``want`` samples (all of them needed) do not fit the context, and what would."""
    new = shape.max_new_tokens
    most = bisect.bisect_left(range(1, new + 1), True, key=lambda n: not fits(want, n))  # the longest that fits
    options = [f"{k} sample{'s' if k > 1 else ''} of {new} tokens"] if fits(k, new) else []
    if most >= 1:
        options.append(f"{want} samples of at most {most} tokens")
    return BudgetInfeasible(
        f"{want} samples of {new} tokens after a {shape.prompt_tokens}-token prompt do not fit the model's "
        f"context of {ctx} cells; it fits {' or '.join(options) if options else 'fewer or shorter samples'}")


def _plan_fixed(shape: QueryShape, profile: Timing | None, memory: MemoryModel, budget: Budget, mem_k: int,
                notes: list[str]) -> Plan:
    strategy = shape.strategy
    want = samples_of(strategy)
    if want > mem_k and shape.exact_samples:
        raise BudgetInfeasible(f"the memory budget allows {mem_k} samples of {shape.max_new_tokens} tokens, not "
                               f"{want}: ask for fewer, or fewer tokens")
    if want > mem_k:
        strategy = with_samples(strategy, mem_k)
        notes.append(f"memory budget allows {mem_k} samples of {shape.max_new_tokens} tokens, not {want}")
    k = samples_of(strategy)
    predicted: float | None = None
    if profile is not None:
        width = _parallel_width(strategy)
        waves = math.ceil(k / width) if isinstance(strategy, Adaptive) else 1
        predicted = profile.predict(prompt_tokens=shape.prompt_tokens, k=width, new_tokens=shape.max_new_tokens)
        predicted += (waves - 1) * shape.max_new_tokens * profile.step_time(width)
        if budget.deadline_s is not None and predicted > budget.deadline_s:
            notes.append(
                f"predicted {predicted:.1f}s if every sample runs to {shape.max_new_tokens} tokens; the "
                f"{budget.deadline_s:g}s deadline will stop it and answer from what has finished"
            )
    return _finish(shape, strategy, predicted, memory, mem_k, notes, budget)


def _finish(shape: QueryShape, strategy: Strategy, predicted: float | None, memory: MemoryModel, mem_k: int,
            notes: list[str], budget: Budget, **extra: Any) -> Plan:
    """The plan of a chosen strategy: the sequences, cells and batch its controller takes
    (``strategies.controllers``: the runner counts with the same numbers)."""
    alloc = plan_allocation(strategy, cue_tokens=shape.cue_tokens, deadline=budget.deadline_s is not None)
    cells = memory.query_cells(prompt_tokens=shape.prompt_tokens, n_seqs=alloc.n_seqs,
                               new_tokens=shape.max_new_tokens, probe_slots=alloc.probe_slots,
                               probe_cells=alloc.probe_cells)
    n_ids = memory.seq_ids(alloc.n_seqs, alloc.probe_slots)
    n_batch = batch_size(shape.prompt_tokens, n_ids)
    allocated = memory.kv_cells(prompt_tokens=shape.prompt_tokens, n_seqs=alloc.n_seqs,
                                new_tokens=shape.max_new_tokens, probe_slots=alloc.probe_slots,
                                probe_cells=alloc.probe_cells)
    k = samples_of(strategy.stage1 if isinstance(strategy, Escalate) else strategy)
    return Plan(
        strategy=strategy, k=k, max_new_tokens=shape.max_new_tokens, n_cells=cells, n_batch=n_batch,
        predicted_s=predicted,
        predicted_peak_bytes=memory.peak(n_seqs=n_ids, n_cells=allocated, n_batch=n_batch),
        kv_bytes=int(memory.kv_bytes_per_cell * allocated), max_k_memory=mem_k, notes=tuple(notes), budget=budget,
        n_seq_ids=n_ids, **extra,
    )


def _escalation(k_max: int, wave: int, base: Escalation) -> Escalation:
    """auto's stage 2: the policy's escalation with at most k_max samples, its first wave
    ``wave`` wide (adaptive's waves and window, online DeepConf's warm-up no wider than k_max)."""
    escalation = with_samples(with_first_wave(base, wave), k_max)
    assert isinstance(escalation, (Adaptive, Confidence))
    return escalation


def _plan_auto(shape: QueryShape, profile: Timing, memory: MemoryModel, budget: Budget, mem_k: int,
               notes: list[str], policy: AutoPolicy) -> Plan:
    stage1 = EarlyExit(every=AUTO_PROBE_EVERY, window=2, k=1, probe=PROBE_TOKENS)
    t1 = profile.predict(prompt_tokens=shape.prompt_tokens, k=1, new_tokens=shape.max_new_tokens)
    if policy is not DEFAULT_POLICY:
        notes.append(policy.describe())
    base = policy.escalation
    k_cap = min(samples_of(base) if base is not None else 0, mem_k - 1)  # stage 1's sample stays in the batch
    if shape.context_cells is not None:
        while k_cap >= 2 and _context(memory, shape.prompt_tokens, k_cap + 1, shape.max_new_tokens, 1) > \
                shape.context_cells:
            k_cap -= 1
    wave = min(best_wave(profile, k_cap), k_cap) if k_cap >= 1 else 1
    if isinstance(base, Confidence):
        wave = max(1, min(first_wave(base), k_cap))  # DeepConf's warm-up (or all k) is its first wave
    one_wave = profile.predict(prompt_tokens=shape.prompt_tokens, k=wave, new_tokens=shape.max_new_tokens)
    escalate: Escalation | None = None
    t2: float | None = None
    if base is None:
        notes.append("the policy escalates never: sampling did not pay on its task")
    elif k_cap < 2:
        notes.append("memory or the model's context allows too few samples: no escalation")
    elif budget.deadline_s is None:
        escalate = _escalation(k_cap, wave, base)
        t2 = one_wave + (math.ceil(k_cap / wave) - 1) * shape.max_new_tokens * profile.step_time(wave)
    else:
        left = budget.deadline_s - t1
        if left < one_wave:
            # Sized for the worst case (every sample runs to max_new_tokens) not even one wave
            # fits; answers are usually much shorter, so the run decides once it has seen how
            # long the first sample took.
            escalate = _escalation(k_cap, wave, base)
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
            escalate = _escalation(k_max, wave, base)
            t2 = one_wave + (math.ceil(k_max / wave) - 1) * per_wave
    if escalate is not None:
        notes.append(f"escalates to {escalate.spec()} when the first answer's certainty is below "
                     f"{policy.confidence:g} and its probes did not agree")
    chosen = Escalate(stage1=stage1, escalation=escalate, confidence=policy.confidence)
    return _finish(shape, chosen, t1, memory, mem_k, notes, budget, escalate_predicted_s=t2,
                   escalate_wave_s=one_wave if escalate is not None else None)


KV_LAYOUTS = ("auto", "unified", "streams")


def kv_layout_for(requested: str, *, lanes: int, available: Sequence[str], deterministic: bool = False) -> str | None:
    """The KV layout of a shared decode loop (None: the engine's default). The rule, from
    bench/kv_layout.py and bench/scheduler.py (docs/BENCHMARKS.md): several queries at once
    (``lanes`` >= 2) decode in one stream per sequence, where each token attends to its
    own cells only (1.8x the tokens/s of one unified cache at 64 sequences of 100-token
    prompts), and a query's tokens do not depend on the others; one query at a time keeps
    one unified cache, where its samples share one copy of the prompt (the same speed, a
    k-th of the prompt's memory: 2,048 cells against 12,288 for maj@8 after a 1,359-token
    prompt). ``deterministic``: the ``exact`` streams, whatever else was asked.
    UsageError when the backend has no such layout."""
    choice = requested.strip().lower()
    if choice not in KV_LAYOUTS:
        raise UsageError(f"unknown KV layout {requested!r}; choose one of: {', '.join(KV_LAYOUTS)}")
    if deterministic:
        if "exact" not in available:
            raise UsageError("--deterministic needs one KV stream per sequence, which this backend does not have "
                             f"(it has: {', '.join(available)})")
        return "exact"
    if choice == "auto":
        return "streams" if lanes >= 2 and "streams" in available else None
    if choice not in available:
        raise UsageError(f"this backend has no {choice!r} KV layout (it has: {', '.join(available)})")
    return choice

