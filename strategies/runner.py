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
from edgescale.runtime.engine import DecodeSession, Engine
from edgescale.runtime.generate import (
    MAX_BATCH,
    BatchGenerator,
    GenerationConfig,
    TokenEvent,
    kv_cells,
)
from edgescale.runtime.sampling import SamplingConfig
from edgescale.strategies.adaptive import AdaptiveController
from edgescale.strategies.answers import extract_probe, is_hedge
from edgescale.strategies.assemble import build_result, empty_result
from edgescale.strategies.auto import AutoController
from edgescale.strategies.base import (
    AnswerBook,
    Controller,
    cancel_live,
)
from edgescale.strategies.best_of_k import BestOfKController
from edgescale.strategies.confidence import ConfidenceController
from edgescale.strategies.early_exit import ANSWER_CUE, EarlyExitController, probe_done
from edgescale.strategies.first_finish import ShortMController
from edgescale.strategies.majority import MajorityController
from edgescale.strategies.planner import Plan
from edgescale.strategies.result import ProbeRecord, Result
from edgescale.strategies.spec import (
    Adaptive,
    Auto,
    BestOfK,
    Confidence,
    EarlyExit,
    Escalate,
    FirstFinish,
    Majority,
    ShortM,
    Single,
    Strategy,
    confidence_of,
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
    conf = confidence_of(strategy)
    if isinstance(strategy, Majority):
        return MajorityController(k=strategy.k, confidence=conf)
    if isinstance(strategy, Confidence):
        return ConfidenceController(strategy)
    if isinstance(strategy, FirstFinish):
        return ShortMController(m=1, k=strategy.k, answered=strategy.rule == "answered")
    if isinstance(strategy, ShortM):
        return ShortMController(m=strategy.m, k=strategy.k, answered=strategy.rule == "answered")
    if isinstance(strategy, BestOfK):
        return BestOfKController(k=strategy.k)
    if isinstance(strategy, Adaptive):
        return AdaptiveController(
            k_max=strategy.max, threshold=strategy.conf, wave=strategy.wave, rule=strategy.rule,
            window=strategy.window, prior=prior, confidence=conf, refill=strategy.refill,
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
    conf = confidence_of(strategy)
    return GenerationConfig(max_new_tokens=max_new_tokens, stop=options.stop, sampling=sampling, seed=options.seed,
                            sampling_overrides=overrides, confidence_top_k=conf.topk if conf is not None else 0)


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


class QueryRun:
    """One query as a controller over its generator, advanced one step at a time by
    whoever owns the step loop: :func:`run_query` alone, or the scheduler with other
    queries. ``started``: when the query arrived (its deadline counts from then)."""

    def __init__(self, engine: Engine, query: Query, *, clock: Callable[[], float] = time.perf_counter,
                 on_step: StepCallback | None = None, started: float | None = None) -> None:
        self.engine = engine
        self.query = query
        self.clock = clock
        self.on_step = on_step
        self.t0 = clock() if started is None else started
        self.cue = engine.tokenize(ANSWER_CUE, add_special=False, parse_special=False)
        self.ctl = build_controller(query.strategy, self.cue, prior=query.prior,
                                    max_new_tokens=query.config.max_new_tokens, step_time=query.step_time)
        self.book = AnswerBook(query.answer_kind, query.choices)
        self.deadline = self.t0 + query.deadline_s if query.deadline_s is not None else None
        self.probe_slots, self.probe_cells = self.ctl.probe_slots, self.ctl.probe_cells
        if self.deadline is not None:  # room for one forced-answer probe
            self.probe_slots = max(self.probe_slots, 1)
            self.probe_cells = max(self.probe_cells, len(self.cue) + FORCED_PROBE_TOKENS)
        self.pace = _Pace(query.step_time)
        self._reading = False  # whether the step under way reads the prompt
        self.gen: BatchGenerator | None = None
        self.result: Result | None = None
        self.queue_s = 0.0  # time between arrival and admission (set by the scheduler)

    @property
    def n_seq_ids(self) -> int:
        """Sequence ids the query needs: its samples and its probe slots."""
        return self.ctl.n_seqs + self.probe_slots

    @property
    def kv_cells(self) -> int:
        """KV cells the query may fill at most: its prompt, every sample's tokens, probe room."""
        return kv_cells(len(self.query.prompt_tokens), self.ctl.n_seqs, self.query.config.max_new_tokens,
                        self.probe_slots, self.probe_cells)

    @property
    def done(self) -> bool:
        return self.result is not None

    def open(self, *, lane: DecodeSession | None = None, prefix: int = 0, prefill_chunk: int = MAX_BATCH) -> None:
        """Make the generator: alone (no lane) it reads the prompt now; on a lane, step by step."""
        try:
            self.gen = BatchGenerator(
                self.engine, self.query.prompt_tokens, self.query.config, n_seqs=self.ctl.n_seqs,
                n_initial=self.ctl.n_initial, probe_slots=self.probe_slots, probe_cells=self.probe_cells,
                deadline=self.deadline, clock=self.clock, lane=lane, prefix=prefix, prefill_chunk=prefill_chunk,
            )
        except DecodeAborted:
            self.result = empty_result(self.engine, self.query, self.clock() - self.t0, queue_s=self.queue_s)

    def due(self, width: int, probes_ahead: int = 0, next_step_s: float = 0.0) -> bool:
        """Before a step of ``width`` live sequences (all queries'): whether this query takes
        part. At the deadline it ends instead: stopped early enough to leave room for a
        forced-answer probe while no finished sample has an answer, and for the
        ``probes_ahead`` forced-answer probes other queries of the shared loop may run
        first (probes decode one query at a time). ``next_step_s``: what the shared loop
        expects the next step to take (it may read other queries' prompts)."""
        gen = self.gen
        assert gen is not None and self.result is None
        self._reading = gen.reading_prompt  # a step that reads the prompt is no sample step
        if self.deadline is None:
            return True
        if gen.reading_prompt:
            if self.clock() + next_step_s < self.deadline:
                return True
            self.result = empty_result(self.engine, self.query, self.clock() - self.t0, gen.stats,
                                       queue_s=self.queue_s)
            return False
        probe = self.pace.probe(len(self.cue))
        reserve = (0.0 if _has_answer(gen, self.book) else probe) + probes_ahead * probe
        if self.clock() + max(self.pace.step(width), next_step_s) + reserve >= self.deadline:
            self._end("deadline")
            return False
        return True

    def may_probe_by(self, due_at: float) -> bool:
        """Whether this query may still need a forced-answer probe before ``due_at``."""
        gen = self.gen
        return (self.deadline is not None and self.deadline <= due_at and gen is not None
                and not gen.reading_prompt and not _has_answer(gen, self.book))

    def after(self, events: Sequence[TokenEvent], seconds: float, width: int) -> None:
        """After a step that took ``seconds`` with ``width`` live sequences."""
        gen = self.gen
        assert gen is not None and self.result is None
        if gen.reading_prompt:
            return
        if not self._reading:  # (the step that read the prompt's last chunk says nothing of a sample step)
            self.pace.observed.append((width, seconds))
        if self.on_step is not None and events:
            self.on_step(gen, events)
        if gen.expired:
            self._end("deadline")
            return
        rule = self.ctl.on_step(gen, events, self.book)
        if rule:
            self._end(rule)
        elif not gen.live:
            self._end("exhausted")

    def cancel(self) -> None:
        """End the query now (its client went away): the samples so far decide."""
        if self.result is None and self.gen is not None and not self.gen.reading_prompt:
            self._end("cancelled")
        elif self.result is None:
            self.result = empty_result(self.engine, self.query, self.clock() - self.t0,
                                       self.gen.stats if self.gen is not None else None, rule="cancelled",
                                       queue_s=self.queue_s)

    def _end(self, rule: str) -> None:
        gen = self.gen
        assert gen is not None
        forced: list[ProbeRecord] = []
        if rule == "deadline":
            assert self.deadline is not None
            forced = _forced_answer(gen, self.ctl, self.book, self.cue, self.pace, self.deadline - self.clock())
        cancel_live(gen, "deadline" if rule == "deadline" else "cancelled")
        decision = self.ctl.decide(gen, self.book)
        self.result = build_result(self.engine, self.query, gen, self.ctl, self.book, decision, rule, forced,
                                   self.clock() - self.t0, queue_s=self.queue_s)


def run_query(
    engine: Engine,
    query: Query,
    *,
    on_step: StepCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Result:
    """Run one query to its end, owning the step loop: the plan's strategy as a controller."""
    run = QueryRun(engine, query, clock=clock, on_step=on_step)
    run.open()
    if run.gen is None:
        assert run.result is not None
        return run.result
    with run.gen as gen:
        while run.result is None:
            width = max(len(gen.live), 1)
            if not run.due(width):
                break
            t = clock()
            events = gen.step()
            run.after(events, clock() - t, width)
    assert run.result is not None
    return run.result


class _Pace:
    """Time estimates for the deadline checks: the device profile's step times (when the
    planner gave them) and the steps observed in this query, whichever is slower."""

    def __init__(self, step_time: Callable[[int], float] | None) -> None:
        self.step_time = step_time
        self.observed: deque[tuple[int, float]] = deque(maxlen=8)  # (live sequences, seconds)

    def step(self, live: int) -> float:
        seen = [t for k, t in self.observed if k == live]
        if not seen and self.step_time is not None:  # the profile's shape, at the pace seen
            seen = [t * self.step_time(live) / self.step_time(k) for k, t in self.observed]
        elif not seen:  # no profile: as if a wider step cost proportionally more (pessimistic)
            seen = [t * live / k for k, t in self.observed]
        guess = statistics.median(seen) if seen else 0.0
        return max(guess, self.step_time(live) if self.step_time else 0.0)

    def probe(self, cue_tokens: int) -> float:
        """A forced-answer probe: the cue in one decode, then up to FORCED_PROBE_TOKENS single steps."""
        one = self.step(1)
        return one * (FORCED_PROBE_TOKENS + 1 + cue_tokens / 16)


def _has_answer(gen: BatchGenerator, book: AnswerBook) -> bool:
    return any(book.value(s) is not None for s in gen.states if s.finished)


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
