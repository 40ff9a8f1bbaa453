"""Run one query: a strategy controller over the batched step loop, under a deadline.

The deadline is checked before every step. A long prefill is interrupted
inside llama.cpp (abort callback). When time is up the loop stops early enough
to leave room for one forced-answer probe: if no finished sample has an
answer, the most advanced live sample is probed for one; the rest are cut
with finish reason "deadline" and the query reports ``stop_reason="deadline"``.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgescale.errors import DecodeAborted
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.runtime.memory import peak_rss_bytes
from edgescale.strategies.adaptive import AdaptiveController
from edgescale.strategies.answers import extract_probe, is_hedge
from edgescale.strategies.base import (
    AnswerBook,
    Controller,
    Decision,
    cancel_live,
    mean_logprob,
    span_logprob,
)
from edgescale.strategies.best_of_k import BestOfKController
from edgescale.strategies.early_exit import ANSWER_CUE, EarlyExitController, probe_done
from edgescale.strategies.first_finish import ShortMController
from edgescale.strategies.majority import MajorityController
from edgescale.strategies.result import ProbeRecord, Result, Sample, Stats
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    EarlyExit,
    FirstFinish,
    Majority,
    ShortM,
    Single,
    Strategy,
)

FORCED_PROBE_TOKENS = 8  # enough for a number or a letter and the closing brace
StepCallback = Callable[[BatchGenerator, Sequence[TokenEvent]], None]


def build_controller(strategy: Strategy, cue: list[int], prior: tuple[str, ...] = ()) -> Controller:
    if isinstance(strategy, Single):
        return MajorityController(k=1)
    if isinstance(strategy, Majority):
        return MajorityController(k=strategy.k)
    if isinstance(strategy, FirstFinish):
        return ShortMController(m=1, k=strategy.k)
    if isinstance(strategy, ShortM):
        return ShortMController(m=strategy.m, k=strategy.k)
    if isinstance(strategy, BestOfK):
        return BestOfKController(k=strategy.k)
    if isinstance(strategy, Adaptive):
        return AdaptiveController(
            k_max=strategy.max, threshold=strategy.conf, wave=strategy.wave, rule=strategy.rule,
            window=strategy.window, prior=prior,
        )
    if isinstance(strategy, EarlyExit):
        return EarlyExitController(
            cue=cue, every=strategy.every, window=strategy.window, k=strategy.k, probe_tokens=strategy.probe
        )
    if isinstance(strategy, Auto):
        raise TypeError("auto must be resolved to a concrete strategy by the planner first")
    raise TypeError(f"unknown strategy {strategy!r}")


@dataclass(frozen=True)
class Query:
    prompt_tokens: Sequence[int]
    strategy: Strategy
    config: GenerationConfig
    answer_kind: str = "auto"
    choices: tuple[str, ...] = ()
    deadline_s: float | None = None
    model_name: str = ""
    plan: dict[str, Any] | None = None
    prior: tuple[str, ...] = ()  # answers already in hand (auto's first stage), counted as votes


def run_query(
    engine: Engine,
    query: Query,
    *,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Result:
    t0 = clock()
    cue = engine.tokenize(ANSWER_CUE, add_special=False, parse_special=False)
    ctl = build_controller(query.strategy, cue, query.prior)
    book = AnswerBook(query.answer_kind, query.choices)
    deadline = t0 + query.deadline_s if query.deadline_s is not None else None
    probe_slots, probe_cells = ctl.probe_slots, ctl.probe_cells
    if deadline is not None:  # room for one forced-answer probe
        probe_slots = max(probe_slots, 1)
        probe_cells = max(probe_cells, len(cue) + FORCED_PROBE_TOKENS)
    try:
        gen = BatchGenerator(
            engine, query.prompt_tokens, query.config, n_seqs=ctl.n_seqs, n_initial=ctl.n_initial,
            probe_slots=probe_slots, probe_cells=probe_cells, deadline=deadline, clock=clock,
        )
    except DecodeAborted:
        return _empty_result(engine, query, clock() - t0)
    forced: list[ProbeRecord] = []
    with gen:
        rule = _loop(gen, ctl, book, deadline, on_step, clock)
        if rule == "deadline":
            forced = _forced_answer(gen, ctl, book, cue)
            cancel_live(gen, "deadline")
        decision = ctl.decide(gen, book)
        return _result(engine, query, gen, ctl, book, decision, rule, forced, clock() - t0)


def _loop(
    gen: BatchGenerator,
    ctl: Controller,
    book: AnswerBook,
    deadline: float | None,
    on_step: StepCallback | None,
    clock: Callable[[], float],
) -> str:
    steps: deque[float] = deque(maxlen=8)
    while True:
        if deadline is not None:
            # Leave room for a forced-answer probe: about FORCED_PROBE_TOKENS steps.
            reserve = FORCED_PROBE_TOKENS * statistics.median(steps) / max(len(gen.live), 1) if steps else 0.0
            if clock() + reserve >= deadline:
                return "deadline"
        t = clock()
        events = gen.step()
        steps.append(clock() - t)
        if on_step is not None and events:
            on_step(gen, events)
        if gen.expired:
            return "deadline"
        rule = ctl.on_step(gen, events, book)
        if rule:
            return rule
        if not gen.live:
            return "exhausted"


def _forced_answer(gen: BatchGenerator, ctl: Controller, book: AnswerBook, cue: list[int]) -> list[ProbeRecord]:
    """At the deadline with no answer yet: ask the most advanced live sample for one."""
    if ctl.decide(gen, book).answer is not None or not gen.live:
        return []
    target = max(gen.live, key=lambda i: (len(gen.states[i].tokens), -i))
    records = []
    for res in gen.probe([target], cue, max_tokens=FORCED_PROBE_TOKENS, done=probe_done):
        got = extract_probe(res.text, book.kind)  # type: ignore[arg-type]
        hedged = is_hedge(res.text)
        answer = got.value if got is not None else None
        if answer is not None:
            book.set_probe_answer(res.index, answer)
        records.append(ProbeRecord(res.index, len(gen.states[res.index].tokens), res.text, answer, hedged))
    return records


def _samples(gen: BatchGenerator, book: AnswerBook) -> tuple[Sample, ...]:
    out = []
    for st in gen.states:
        if st.started_at is None:
            continue
        got = book.of(st) if st.finished else None
        out.append(
            Sample(
                index=st.index,
                seed=st.seed,
                text=st.text,
                n_tokens=len(st.tokens),
                finish_reason=st.finish_reason or "cancelled",
                answer=book.value(st),
                answer_source=book.source(st),
                mean_logprob=mean_logprob(st),
                answer_logprob=span_logprob(st, got.span) if got is not None else None,
                finished_at_s=st.finished_at,
            )
        )
    return tuple(out)


def _result(
    engine: Engine,
    query: Query,
    gen: BatchGenerator,
    ctl: Controller,
    book: AnswerBook,
    decision: Decision,
    rule: str,
    forced: list[ProbeRecord],
    wall_s: float,
) -> Result:
    samples = _samples(gen, book)
    probes = tuple(getattr(ctl, "records", ())) + tuple(forced)
    cut = ("cancelled", "deadline", "early-exit")
    alloc = getattr(gen.session, "kv_bytes_allocated", None)
    stats = Stats(
        prompt_tokens=len(query.prompt_tokens),
        generated_tokens=gen.generated_tokens,
        probe_tokens=gen.stats.probe_tokens,
        decode_steps=gen.stats.decode_steps,
        wall_s=wall_s,
        prefill_s=gen.stats.prefill_s,
        ttft_s=gen.stats.first_token_s,
        peak_kv_bytes=gen.kv_bytes_peak(),
        kv_bytes_allocated=int(alloc()) if callable(alloc) else 0,
        peak_rss_bytes=peak_rss_bytes(),
        threads=engine.n_threads,
        backend=engine.backend_name,
        samples_started=len(samples),
        cancelled_tokens=sum(s.n_tokens for s in samples if s.finish_reason in cut),
    )
    winner = decision.winner
    text = gen.states[winner].text if winner is not None else ""
    return Result(
        answer=decision.answer,
        text=text,
        winner=winner,
        strategy=query.strategy.spec(),
        stop_reason=rule,
        votes=decision.votes,
        samples=samples,
        probes=probes,
        stats=stats,
        model=query.model_name,
        answer_kind=query.answer_kind,
        plan=query.plan,
    )


def _empty_result(engine: Engine, query: Query, wall_s: float) -> Result:
    """The deadline came before the prompt was even read."""
    stats = Stats(
        prompt_tokens=len(query.prompt_tokens), generated_tokens=0, probe_tokens=0, decode_steps=0,
        wall_s=wall_s, prefill_s=wall_s, ttft_s=None, peak_kv_bytes=0, kv_bytes_allocated=0,
        peak_rss_bytes=peak_rss_bytes(), threads=engine.n_threads, backend=engine.backend_name,
    )
    return Result(
        answer=None, text="", winner=None, strategy=query.strategy.spec(), stop_reason="deadline",
        votes={}, samples=(), probes=(), stats=stats, model=query.model_name,
        answer_kind=query.answer_kind, plan=query.plan,
    )
