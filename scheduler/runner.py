"""One query in the scheduler's step loop: a strategy controller over its batched
generator, under a deadline.

Every query runs here as a :class:`QueryRun`, advanced by the one step loop there is,
the scheduler's (``scheduler.loop.Scheduler``), alone or with other queries. The
deadline is checked before every step (a prompt is read in chunks, one per step,
so a long prompt is checked between its chunks too). When time is up the query stops
early enough to leave room for one forced-answer probe: if no finished sample has an
answer, the most advanced live sample is probed for one; the rest are cut with finish
reason "deadline" and the query reports ``stop_reason="deadline"``.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Callable, Sequence

from edgescale.deadline import Deadline
from edgescale.runtime.engine import DecodeSession, Engine, MemoryLayout
from edgescale.runtime.generate import MAX_BATCH, BatchGenerator, TokenEvent
from edgescale.scheduler.query import Query, StepCallback
from edgescale.scheduler.results import build_result, empty_result
from edgescale.strategies.base import AnswerBook, Controller, cancel_live
from edgescale.strategies.controllers import FORCED_PROBE_TOKENS, allocation, build_controller
from edgescale.strategies.early_exit import ANSWER_CUE, probe_done
from edgescale.strategies.result import ProbeRecord, Result

__all__ = ["Query", "QueryRun", "StepCallback"]


class QueryRun:
    """One query as a controller over its generator, advanced one step at a time by the
    scheduler's loop, which decodes every running query's feeds in one shared step. Its
    deadline, and its wall time, count from ``query.deadline.arrival``."""

    def __init__(self, engine: Engine, query: Query, *, clock: Callable[[], float] = time.perf_counter,
                 on_step: StepCallback | None = None, layout: MemoryLayout | None = None) -> None:
        self.engine = engine
        self.layout = layout or engine.memory_layout  # the KV layout its cells are counted in
        self.query = query
        self.clock = clock
        self.on_step = on_step
        # the deadline (and the query's wall time) counts from its arrival (the scheduler's
        # queries all carry one: plan_request, planned_request); a query without one, from now
        self.deadline = query.deadline if query.deadline is not None else Deadline(clock())
        self.t0 = self.deadline.arrival
        self.cue = engine.tokenize(ANSWER_CUE, add_special=False, parse_special=False)
        self.ctl = build_controller(query.strategy, self.cue, prior=query.prior,
                                    max_new_tokens=query.config.max_new_tokens, step_time=query.step_time)
        self.book = AnswerBook(query.answer_kind, query.choices, tail=query.config.tail is not None)
        self.alloc = allocation(self.ctl, cue_tokens=len(self.cue), deadline=self.deadline.bounded)
        self.probe_slots, self.probe_cells = self.alloc.probe_slots, self.alloc.probe_cells
        self.pace = _Pace(query.step_time)
        self._reading = False  # whether the step under way reads the prompt
        self.gen: BatchGenerator | None = None
        self.result: Result | None = None
        self.queue_s = 0.0  # time between arrival and admission (set by the scheduler)

    @property
    def n_seq_ids(self) -> int:
        """Sequence ids the query needs: its samples and its probe slots."""
        return self.layout.seq_ids(self.alloc.n_seqs, self.probe_slots)

    @property
    def kv_cells(self) -> int:
        """KV cells the query may fill at most: its prompt, every sample's tokens, probe room
        (the engine's layout; the same count as its plan's ``n_cells``)."""
        return self.layout.query_cells(
            prompt_tokens=len(self.query.prompt_tokens), n_seqs=self.alloc.n_seqs,
            new_tokens=self.query.config.max_new_tokens, probe_slots=self.probe_slots, probe_cells=self.probe_cells)

    @property
    def row_cells(self) -> int:
        """The longest row the query makes (what one KV stream must hold)."""
        return self.layout.row_cells(
            prompt_tokens=len(self.query.prompt_tokens), new_tokens=self.query.config.max_new_tokens,
            probe_slots=self.probe_slots, probe_cells=self.probe_cells)

    @property
    def done(self) -> bool:
        return self.result is not None

    def open(self, lane: DecodeSession, *, prefix: int = 0, prefill_chunk: int = MAX_BATCH) -> None:
        """Make the generator on the query's lane of the shared session: it reads the prompt
        in the shared steps, ``prefill_chunk`` tokens a step after the cached ``prefix``."""
        self.gen = BatchGenerator(
            self.engine, self.query.prompt_tokens, self.query.config, n_seqs=self.ctl.n_seqs,
            n_initial=self.ctl.n_initial, probe_slots=self.probe_slots, probe_cells=self.probe_cells,
            deadline=self.deadline, clock=self.clock, lane=lane, prefix=prefix, prefill_chunk=prefill_chunk,
        )

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
        due = self.deadline.due
        if not self.deadline.bounded:
            return True
        if gen.reading_prompt:
            if self.clock() + next_step_s < due:
                return True
            self.result = empty_result(self.engine, self.query, self.clock() - self.t0, gen.stats,
                                       queue_s=self.queue_s)
            return False
        probe = self.pace.probe(len(self.cue))
        reserve = (0.0 if _has_answer(gen, self.book) else probe) + probes_ahead * probe
        if self.clock() + max(self.pace.step(width), next_step_s) + reserve >= due:
            self._end("deadline")
            return False
        return True

    def may_probe_by(self, due_at: float) -> bool:
        """Whether this query may still need a forced-answer probe before ``due_at``."""
        gen = self.gen
        return (self.deadline.bounded and self.deadline.due <= due_at and gen is not None
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
            forced = _forced_answer(gen, self.ctl, self.book, self.cue, self.pace, self.deadline.due - self.clock())
        cancel_live(gen, "deadline" if rule == "deadline" else "cancelled")
        decision = self.ctl.decide(gen, self.book)
        self.result = build_result(self.engine, self.query, gen, self.ctl, self.book, decision, rule, forced,
                                   self.clock() - self.t0, queue_s=self.queue_s)


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
        got, hedged = book.probe_answer(res)
        answer = got.value if got is not None else None
        if answer is not None:
            book.set_probe_answer(res.index, answer)
        records.append(ProbeRecord(res.index, len(gen.states[res.index].tokens), res.text, answer, hedged))
    return records
