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
from typing import TYPE_CHECKING, Callable, Sequence

from edgescale.errors import DecodeAborted
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.runtime.sampling import SamplingConfig
from edgescale.runtime.memory import peak_rss_bytes
from edgescale.strategies.adaptive import AdaptiveController
from edgescale.strategies.answers import extract_probe, is_hedge
from edgescale.strategies.base import (
    AnswerBook,
    Controller,
    Decision,
    answer_logprob,
    cancel_live,
    mean_logprob,
)
from edgescale.strategies.auto import AutoController
from edgescale.strategies.best_of_k import BestOfKController
from edgescale.strategies.early_exit import ANSWER_CUE, EarlyExitController, probe_done
from edgescale.strategies.first_finish import ShortMController
from edgescale.strategies.majority import MajorityController
from edgescale.strategies.planner import Plan
from edgescale.strategies.result import ProbeRecord, Result, Sample, Stats
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    EarlyExit,
    Escalate,
    FirstFinish,
    Majority,
    ShortM,
    Single,
    Strategy,
)

if TYPE_CHECKING:
    from edgescale.settings import AskOptions

FORCED_PROBE_TOKENS = 8  # enough for a number or a letter and the closing brace
StepCallback = Callable[[BatchGenerator, Sequence[TokenEvent]], None]


def build_controller(
    strategy: Strategy, cue: list[int], *, prior: tuple[str, ...] = (), max_new_tokens: int = 0,
    step_time: Callable[[int], float] | None = None,
) -> Controller:
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
    if isinstance(strategy, Escalate):
        s1 = strategy.stage1
        return AutoController(
            stage1=EarlyExitController(cue=cue, every=s1.every, window=s1.window, k=1, probe_tokens=s1.probe),
            escalation=strategy.escalation, confidence=strategy.confidence, max_new_tokens=max_new_tokens,
            step_time=step_time,
        )
    if isinstance(strategy, Auto):
        raise TypeError("auto must be resolved to a concrete strategy by the planner first")
    raise TypeError(f"unknown strategy {strategy!r}")


def generation_config(strategy: Strategy, options: AskOptions, max_new_tokens: int) -> GenerationConfig:
    """The samples' settings: auto's first sample is greedy (unless a temperature is
    given), its escalation's samples are drawn at the multi-sample temperature."""
    overrides: tuple[tuple[int, SamplingConfig], ...] = ()
    sampling = options.sampling_for(strategy)
    if isinstance(strategy, Escalate):
        overrides = ((0, options.sampling_for(Single())),)
    return GenerationConfig(max_new_tokens=max_new_tokens, stop=options.stop, sampling=sampling, seed=options.seed,
                            sampling_overrides=overrides)


@dataclass(frozen=True)
class Query:
    """One prompt and its plan, ready to run."""

    prompt_tokens: Sequence[int]
    plan: Plan
    config: GenerationConfig
    answer_kind: str = "auto"
    choices: tuple[str, ...] = ()
    deadline_s: float | None = None
    model_name: str = ""
    prior: tuple[str, ...] = ()  # answers already in hand, counted as votes (adaptive)
    step_time: Callable[[int], float] | None = None  # seconds per step at k live (device profile)

    @property
    def strategy(self) -> Strategy:
        return self.plan.strategy


def run_query(
    engine: Engine,
    query: Query,
    *,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Result:
    """Run one query to its end: the plan's strategy as a controller over the step loop."""
    t0 = clock()
    cue = engine.tokenize(ANSWER_CUE, add_special=False, parse_special=False)
    ctl = build_controller(query.strategy, cue, prior=query.prior, max_new_tokens=query.config.max_new_tokens,
                           step_time=query.step_time)
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
    pace = _Pace(query.step_time)
    with gen:
        rule = _loop(gen, ctl, book, deadline, on_step, clock, pace, len(cue))
        if rule == "deadline":
            assert deadline is not None
            forced = _forced_answer(gen, ctl, book, cue, pace, deadline - clock())
            cancel_live(gen, "deadline")
        decision = ctl.decide(gen, book)
        return _result(engine, query, gen, ctl, book, decision, rule, forced, clock() - t0)


class _Pace:
    """Time estimates for the deadline checks: the device profile's step times (when the
    planner gave them) and the steps observed in this query, whichever is slower."""

    def __init__(self, step_time: Callable[[int], float] | None) -> None:
        self.step_time = step_time
        self.observed: deque[tuple[int, float]] = deque(maxlen=8)  # (live sequences, seconds)

    def step(self, live: int) -> float:
        seen = [t for k, t in self.observed if k == live] or [t * live / k for k, t in self.observed]
        guess = statistics.median(seen) if seen else 0.0
        return max(guess, self.step_time(live) if self.step_time else 0.0)

    def probe(self, cue_tokens: int) -> float:
        """A forced-answer probe: the cue in one decode, then up to FORCED_PROBE_TOKENS single steps."""
        one = self.step(1)
        return one * (FORCED_PROBE_TOKENS + 1 + cue_tokens / 16)


def _has_answer(gen: BatchGenerator, book: AnswerBook) -> bool:
    return any(book.value(s) is not None for s in gen.states if s.finished)


def _loop(
    gen: BatchGenerator,
    ctl: Controller,
    book: AnswerBook,
    deadline: float | None,
    on_step: StepCallback | None,
    clock: Callable[[], float],
    pace: _Pace,
    cue_tokens: int,
) -> str:
    while True:
        if deadline is not None:
            # Stop before a step that would cross the deadline, leaving room for a
            # forced-answer probe while no finished sample has an answer.
            reserve = 0.0 if _has_answer(gen, book) else pace.probe(cue_tokens)
            if clock() + pace.step(max(len(gen.live), 1)) + reserve >= deadline:
                return "deadline"
        live = len(gen.live)
        t = clock()
        events = gen.step()
        pace.observed.append((max(live, 1), clock() - t))
        if on_step is not None and events:
            on_step(gen, events)
        if gen.expired:
            return "deadline"
        rule = ctl.on_step(gen, events, book)
        if rule:
            return rule
        if not gen.live:
            return "exhausted"


def _forced_answer(gen: BatchGenerator, ctl: Controller, book: AnswerBook, cue: list[int], pace: _Pace,
                   time_left: float) -> list[ProbeRecord]:
    """At the deadline with no answer yet: ask the most advanced live sample for one,
    with as many tokens as the time left allows (at least 2)."""
    if ctl.decide(gen, book).answer is not None or not gen.live:
        return []
    one = max(pace.step(1), 1e-6)
    budget = int(time_left / one) - 1 - len(cue) // 16
    max_tokens = max(2, min(FORCED_PROBE_TOKENS, budget))
    target = max(gen.live, key=lambda i: (len(gen.states[i].tokens), -i))
    records = []
    for res in gen.probe([target], cue, max_tokens=max_tokens, done=probe_done, within_deadline=False):
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
                answer_logprob=answer_logprob(st, book),
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
    probes = tuple(ctl.records) + tuple(forced)
    cut = ("cancelled", "deadline", "early-exit")
    stats = Stats(
        prompt_tokens=len(query.prompt_tokens),
        generated_tokens=gen.generated_tokens,
        probe_tokens=gen.stats.probe_tokens,
        decode_steps=gen.stats.decode_steps,
        wall_s=wall_s,
        prefill_s=gen.stats.prefill_s,
        ttft_s=gen.stats.first_token_s,
        peak_kv_bytes=gen.kv_bytes_peak(),
        kv_bytes_allocated=gen.session.kv_bytes_allocated(),
        peak_rss_bytes=peak_rss_bytes(),
        threads=engine.n_threads,
        backend=engine.backend_name,
        samples_started=len(samples),
        cancelled_tokens=sum(s.n_tokens for s in samples if s.finish_reason in cut),
    )
    winner = decision.winner
    text = gen.states[winner].text if winner is not None else ""
    outcome = ctl.outcome
    return Result(
        answer=decision.answer,
        text=text,
        winner=winner,
        strategy=query.strategy.spec(),
        stop_reason=f"{outcome.name}:{rule}" if outcome is not None else rule,
        votes=decision.votes,
        samples=samples,
        probes=probes,
        stats=stats,
        model=query.model_name,
        answer_kind=query.answer_kind,
        plan=query.plan,
        outcome=outcome,
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
