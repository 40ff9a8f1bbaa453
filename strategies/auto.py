"""`auto`: run the planner's escalation (see strategies/planner.py for the policy).

Stage 1 is cheap (one greedy sample with early-exit probes). If its answer is
confident (the probes agreed, or the answer's tokens have a geometric-mean
probability of at least ``plan.confidence``) the query ends there. Otherwise,
when time is left for at least one wave, stage 2 runs adaptive sampling with
stage 1's answer counted as a vote. Both stages share the query's deadline.
The result merges both stages: every sample, every probe, summed tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

from edgescale.runtime.engine import Engine
from edgescale.runtime.sampling import SamplingConfig
from edgescale.strategies.planner import Plan
from edgescale.strategies.result import ProbeRecord, Result, Sample, Stats
from edgescale.strategies.runner import Query, StepCallback, run_query
from edgescale.strategies.spec import parse_strategy


def certainty(result: Result) -> float | None:
    """Geometric-mean probability of the winning answer's tokens (self-certainty)."""
    if result.winner is None:
        return None
    sample = next((s for s in result.samples if s.index == result.winner), None)
    if sample is None or sample.answer_logprob is None:
        return None
    return math.exp(sample.answer_logprob)


def is_confident(result: Result, threshold: float) -> bool:
    if result.answer is None:
        return False
    if result.stop_reason == "probes-agreed":
        return True
    c = certainty(result)
    return c is not None and c >= threshold


def run_auto(
    engine: Engine,
    query: Query,
    plan: Plan,
    *,
    stage2_sampling: SamplingConfig,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Result:
    t0 = clock()
    first = run_query(engine, replace(query, strategy=parse_strategy(plan.strategy), plan=None),
                      on_step=on_step, clock=clock)
    elapsed = clock() - t0
    left = None if query.deadline_s is None else query.deadline_s - elapsed
    confident = is_confident(first, plan.confidence or 1.0)
    if confident or plan.escalate_to is None or first.stop_reason == "deadline":
        why = "confident" if confident else "no-escalation"
        return _merge(query, plan, first, None, why, clock() - t0)
    spec = parse_strategy(plan.escalate_to)
    if left is not None and left < (plan.escalate_wave_s or 0.0):
        return _merge(query, plan, first, None, "no-time-to-escalate", clock() - t0)
    prior = (first.answer,) if first.answer is not None else ()
    second_query = replace(
        query, strategy=spec, plan=None, prior=prior, deadline_s=left,
        config=replace(query.config, sampling=stage2_sampling),
    )
    second = run_query(engine, second_query, clock=clock)
    return _merge(query, plan, first, second, "escalated", clock() - t0)


def _shift_sample(s: Sample, offset: int) -> Sample:
    return replace(s, index=s.index + offset)


def _shift_probe(p: ProbeRecord, offset: int) -> ProbeRecord:
    return replace(p, sample=p.sample + offset)


def _merge(query: Query, plan: Plan, first: Result, second: Result | None, how: str, wall_s: float) -> Result:
    plan_dict = {**plan.to_dict(), "outcome": how, "stage1_certainty": certainty(first)}
    if second is None:
        return replace(first, strategy="auto", stop_reason=f"{how}:{first.stop_reason}", plan=plan_dict,
                       stats=replace(first.stats, wall_s=wall_s))
    offset = len(first.samples)
    a, b = first.stats, second.stats
    stats = Stats(
        prompt_tokens=a.prompt_tokens,
        generated_tokens=a.generated_tokens + b.generated_tokens,
        probe_tokens=a.probe_tokens + b.probe_tokens,
        decode_steps=a.decode_steps + b.decode_steps,
        wall_s=wall_s,
        prefill_s=a.prefill_s + b.prefill_s,
        ttft_s=a.ttft_s,
        peak_kv_bytes=max(a.peak_kv_bytes, b.peak_kv_bytes),
        kv_bytes_allocated=max(a.kv_bytes_allocated, b.kv_bytes_allocated),
        peak_rss_bytes=max(a.peak_rss_bytes, b.peak_rss_bytes),
        threads=b.threads,
        backend=b.backend,
        samples_started=a.samples_started + b.samples_started,
        cancelled_tokens=a.cancelled_tokens + b.cancelled_tokens,
    )
    answer = second.answer if second.answer is not None else first.answer
    if second.winner is not None:
        winner, text = second.winner + offset, second.text
    else:
        winner, text = first.winner, first.text
    return Result(
        answer=answer, text=text, winner=winner, strategy="auto",
        stop_reason=f"{how}:{second.stop_reason}", votes=second.votes or first.votes,
        samples=first.samples + tuple(_shift_sample(s, offset) for s in second.samples),
        probes=first.probes + tuple(_shift_probe(p, offset) for p in second.probes),
        stats=stats, model=first.model, answer_kind=first.answer_kind, plan=plan_dict,
    )
