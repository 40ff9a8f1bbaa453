"""Many queries, one decode loop: admission, a shared KV budget, a queue and the prefix cache.

One :class:`Scheduler` per loaded model owns the step loop in a thread of its own.
Clients :meth:`~Scheduler.submit` a :class:`Request` and get a future. Between
steps the scheduler retires finished queries and admits waiting ones; every step
decodes the feeds of all running queries in one ``decode`` of the shared session:
each running query's sampled tokens, and the next prompt chunk
(``prefill_chunk`` tokens) of each query still reading its prompt. Each query keeps
its own controller, samplers, seeds, cancel/fork semantics and telemetry
(scheduler.runner.QueryRun); probes run on the shared session between steps.

Admission (the policy, stated so it can be argued with):

* **Room.** A query is planned when it reaches the head of the queue, from the load
  then: the step time at the batch width it will share (the live sequences of the
  running queries plus its own) and the time it waited, which its deadline has
  already spent. It is admitted when its plan's KV cells and sequence ids fit what
  the running queries leave (least recently used prefix-cache entries are evicted
  to make room); otherwise it waits. With ``memory_bytes`` the shared context is
  sized once from the budget; without, it is sized to the queries waiting when the
  loop is idle (and recreated, bigger, only then).
* **Order.** ``fifo`` (arrival order) or ``edf`` (earliest deadline first; no
  deadline counts as the latest). A query that does not fit keeps its place: the
  ones behind it wait too (no overtaking, so no starvation).
* **Deadlines count from arrival.** A query whose deadline passes while it waits is
  answered at once with ``stop_reason: deadline`` and no samples (or rejected with
  ``DeadlineMissed``, ``on_expired="reject"``), never left to time out silently.
* **Bounded queue.** More than ``max_queue`` waiting queries: ``submit`` raises
  ``QueueFull``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable, Sequence, TypeVar

import psutil

from edgescale.errors import BudgetInfeasible, DeadlineMissed, EdgescaleError, QueueFull, UsageError
from edgescale.runtime.engine import Engine
from edgescale.runtime.memory import MemoryModel, memory_model
from edgescale.scheduler.config import (
    POLICIES,
    SchedulerConfig,
    SchedulerStats,
    cells_in_budget,
    min_memory_bytes,
)
from edgescale.scheduler.lanes import SharedContext
from edgescale.scheduler.prefix_cache import PrefixCache
from edgescale.scheduler.request import Request, plan_request
from edgescale.scheduler.results import empty_result
from edgescale.scheduler.runner import QueryRun
from edgescale.scheduler.sizing import Need, available_memory_refusal, context_shape
from edgescale.scheduler.step import Running, step
from edgescale.strategies.planner import Plan
from edgescale.strategies.result import Result

T = TypeVar("T")

__all__ = ["POLICIES", "Request", "Scheduler", "SchedulerConfig", "SchedulerStats", "cells_in_budget",
           "min_memory_bytes"]


class Scheduler:
    """Owns one engine's step loop; thread-safe submit."""

    def __init__(self, engine: Engine, config: SchedulerConfig = SchedulerConfig(),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.stats = SchedulerStats()
        self._layout = engine.memory_layout if config.kv_layout is None else engine.kv_layouts[config.kv_layout]
        self._memory: MemoryModel = memory_model(engine, self._layout.name, config.kv_type)
        self._lock = threading.Condition()
        self._queue: deque[Request] = deque()
        self._running: list[Running] = []
        self._shared: SharedContext | None = None
        self._cache: PrefixCache | None = None
        self._closing = False
        self._calls: deque[tuple[Callable[[Engine], object], Future[object]]] = deque()
        self._thread = threading.Thread(target=self._loop, name="edgescale-scheduler", daemon=True)
        self._thread.start()

    # -- clients -----------------------------------------------------------------------
    def submit(self, request: Request) -> Future[Result]:
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[Request]) -> list[Future[Result]]:
        """Queue requests together (they are seen by one admission round)."""
        with self._lock:
            if self._closing:
                raise UsageError("the scheduler is closed")
            if len(self._queue) + len(requests) > self.config.max_queue:
                self.stats.rejected += len(requests)
                raise QueueFull(f"{len(self._queue)} queries are waiting (the queue holds {self.config.max_queue})")
            self._queue.extend(requests)
            self._lock.notify()
        return [r.future for r in requests]

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def kv_cells(self) -> tuple[int, int]:
        """(cells in use, cells of the shared context)."""
        shared = self._shared
        return (shared.cells_used(), shared.n_cells) if shared is not None else (0, 0)

    def reserved_cells(self) -> int:
        """KV cells the running queries hold in reserve (their plans' need)."""
        return sum(r.cells for r in list(self._running))

    def cache_cells(self) -> int:
        return self._cache.cells if self._cache is not None else 0

    def close(self, timeout: float | None = None) -> None:
        """Finish the running queries, answer the waiting ones as cancelled, stop the loop.
        ``timeout``: seconds to wait for the loop to stop (``TimeoutError`` if it has not)."""
        with self._lock:
            self._closing = True
            for r in self._queue:
                r.cancel()
            self._lock.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the scheduler's loop did not stop within {timeout} s")

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        if self.config.compute_nice and hasattr(os, "setpriority") and sys.platform.startswith("linux"):
            # Linux keeps a nice value per thread, and the threads llama.cpp starts from this one inherit it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.compute_nice)
        while True:
            with self._lock:
                while not self._queue and not self._running and not self._closing and not self._calls:
                    self._lock.wait()
                if self._closing and not self._queue and not self._running and not self._calls:
                    break
            self._run_calls()
            try:
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:  # noqa: BLE001  (a fault must reach the callers, not kill the loop)
                self._fail_all(exc)
        if self._cache is not None:
            self._cache.clear()
        if self._shared is not None:
            self._shared.close()

    def call(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run ``fn(engine)`` in the loop's thread, between steps (a check or a measurement that
        decodes). Every decode of an engine runs in this one thread: llama.cpp's OpenMP build
        keeps a team of threads per calling thread, and two teams on too few cores make every
        decode wait (measured: 2.5x slower steps once a second thread had decoded)."""
        future: Future[T] = Future()
        with self._lock:
            if self._closing:
                raise UsageError("the scheduler is closed")
            self._calls.append((fn, future))  # type: ignore[arg-type]
            self._lock.notify()
        return future

    def _run_calls(self) -> None:
        while self._calls:
            with self._lock:
                fn, future = self._calls.popleft()
            try:
                future.set_result(fn(self.engine))
            except BaseException as exc:  # noqa: BLE001  (it belongs to the caller)
                future.set_exception(exc)

    def _fail_all(self, exc: Exception) -> None:
        for r in self._running:
            if not r.request.future.done():
                r.request.future.set_exception(exc)
            r.lane.close()
        self._running.clear()
        self._drop_context()

    def _width(self) -> int:
        return sum(len(r.run.gen.live) if r.run.gen is not None else 0 for r in self._running)

    def _reserved(self) -> int:
        return sum(r.cells for r in self._running)

    def _pick(self) -> Request | None:
        with self._lock:
            if not self._queue:
                return None
            if self.config.policy == "edf":
                head = min(self._queue, key=lambda r: (r.deadline.due, r.arrival))
            else:
                head = self._queue[0]
            return head

    def _dequeue(self, request: Request) -> None:
        with self._lock:
            self._queue.remove(request)

    def _sweep(self) -> None:
        """Answer, wherever they wait in the queue, the queries whose client has gone and
        those whose deadline passes before the next sweep could see them (now plus the
        last step's time: answering a little early beats answering late)."""
        now = self.clock()
        last_step = self.stats.recent[-1][0] if self.stats.recent and self._running else 0.0
        with self._lock:
            gone = [r for r in self._queue if r.cancelled or r.future.cancelled()
                    or r.deadline.passed(now + last_step)]
            for r in gone:
                self._queue.remove(r)
        for r in gone:
            late = r.deadline.passed(now + last_step) and not r.cancelled
            self._expire(r, now, rule="deadline" if late else "cancelled")

    def _admit(self) -> None:
        self._sweep()
        while len(self._running) < self.config.max_running:
            request = self._pick()
            if request is None:
                return
            now = self.clock()
            if request.cancelled or request.future.cancelled():
                self._dequeue(request)
                self._expire(request, now, rule="cancelled")
                continue
            if request.deadline.passed(now):
                self._dequeue(request)
                self._expire(request, now, rule="deadline")
                continue
            try:
                query = plan_request(request, self._memory, others=self._width(), now=now)
                run = QueryRun(self.engine, query, clock=self.clock, on_step=request.on_step, layout=self._layout)
            except EdgescaleError as exc:
                self._dequeue(request)
                request.future.set_exception(exc)
                continue
            failure: EdgescaleError | None = None
            try:
                fits = self._make_room(run)
            except EdgescaleError as exc:
                fits, failure = False, exc
            if not fits:
                if self._running and failure is None:
                    return  # it waits for the running queries; the ones behind it wait too
                self._dequeue(request)
                request.future.set_exception(failure or BudgetInfeasible(
                    f"the query needs {run.kv_cells} KV cells and {run.n_seq_ids} sequences; the shared context "
                    f"holds {self._shared.n_cells if self._shared else 0} cells: raise --memory or lower -k / "
                    "--max-tokens"))
                continue
            self._dequeue(request)
            self._start(request, run, now)

    def _make_room(self, run: QueryRun) -> bool:
        """Whether the query fits now (evicting cache entries as needed); sizes or resizes the
        shared context when the loop is idle."""
        need_cells, need_ids, row = run.kv_cells, run.n_seq_ids, run.row_cells
        if self._shared is None or (not self._running and not self._fits(need_cells, need_ids, row, evict=True)):
            if self._running:
                return False
            self._resize(need_cells, need_ids, row, run.query.plan)
        return self._fits(need_cells, need_ids, row, evict=True)

    def _fits(self, cells: int, ids: int, row: int, *, evict: bool) -> bool:
        shared = self._shared
        if shared is None or row > shared.stream_cells:
            return False
        cache = self._cache
        while True:
            cached = cache.cells if cache is not None else 0
            if self._reserved() + cells + cached <= shared.n_cells and ids <= shared.free_ids:
                return True
            if not evict or cache is None or not cache.evict_one():
                return False

    def _resize(self, cells: int, ids: int, row: int, plan: Plan) -> None:
        """(Re)make the shared context for the queries waiting now (as many as may run at once,
        each taken to need what the head needs): ``scheduler.sizing.context_shape``."""
        self._drop_context()
        with self._lock:
            group = max(1, self.config.expect_running, min(len(self._queue), self.config.max_running))
        own = plan.n_batch if plan.budget is not None and plan.budget.memory_bytes is not None else None
        shape = context_shape(self.config, self._memory, Need(cells, ids, row, own), group=group,
                              max_ids=self.engine.max_sequences, context_cells=self.engine.info.n_ctx_train)
        if self.config.memory_bytes is None:
            refusal = available_memory_refusal(shape.n_cells * self._memory.kv_bytes_per_cell,
                                               psutil.virtual_memory().available)
            if refusal is not None:
                raise refusal
        self._open_context(n_cells=shape.n_cells, n_ids=shape.n_ids, max_batch=shape.max_batch)

    def _open_context(self, *, n_cells: int, n_ids: int, max_batch: int) -> None:
        self._shared = SharedContext(self.engine, n_cells=n_cells, n_ids=n_ids, max_batch=max_batch,
                                     kv_layout=self._layout.name, kv_type=self.config.kv_type)
        self._shared.before_side_decode = self._own_rows
        self.stats.contexts += 1
        if self.config.prefix_cache:
            cap = int(self._shared.n_cells * self.config.prefix_cache_fraction)
            self._cache = PrefixCache(self._shared, max_cells=cap)

    def _drop_context(self) -> None:
        if self._cache is not None:
            self._cache.clear()
            self._cache = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def _start(self, request: Request, run: QueryRun, now: float) -> None:
        shared = self._shared
        assert shared is not None
        run.queue_s = now - request.arrival
        lane = shared.lane(run.n_seq_ids, run.kv_cells)
        prefix = 0
        if self._cache is not None:
            hit = self._cache.lookup(run.query.prompt_tokens)
            if hit is not None:
                lane.adopt_prefix(hit.seq, hit.n_tokens)
                prefix = hit.n_tokens
        run.open(lane=lane, prefix=prefix, prefill_chunk=self.config.prefill_chunk)
        self.stats.admitted += 1
        self.stats.prompt_tokens_cached += prefix
        if self._cache is not None:
            self.stats.cache_hits, self.stats.cache_misses = self._cache.hits, self._cache.misses
        self._running.append(Running(request, run, lane, run.kv_cells))

    def _expire(self, request: Request, now: float, *, rule: str) -> None:
        """Answer a query that never got a sample: cancelled, or its deadline passed while it waited."""
        if request.future.done():
            return
        if rule == "deadline" and self.config.on_expired == "reject":
            self.stats.rejected += 1
            request.future.set_exception(DeadlineMissed(
                f"the deadline passed after {now - request.arrival:.2f}s in the queue"))
            return
        self.stats.expired += 1
        try:
            query = plan_request(request, self._memory, others=0, now=now)
        except EdgescaleError as exc:
            request.future.set_exception(exc)
            return
        request.future.set_result(empty_result(self.engine, query, now - request.arrival, rule=rule,
                                               queue_s=now - request.arrival))

    def _step(self) -> None:
        shared = self._shared
        assert shared is not None
        step(self._running, shared, self.config, self.stats, self.clock, self._cache_prompt)
        self._retire()

    def _own_rows(self) -> None:
        """A probe is about to decode: the others' rows must not be views of the buffer it fills."""
        for r in self._running:
            if r.run.gen is not None:
                r.run.gen.own_rows()

    def _cache_prompt(self, r: Running) -> None:
        if self._cache is not None and not r.cached:
            r.cached = self._cache.insert(r.run.query.prompt_tokens, r.lane.ids[0])

    def _retire(self) -> None:
        keep = []
        for r in self._running:
            if r.run.done:
                r.lane.close()
                self.stats.finished += 1
                assert r.run.result is not None
                if not r.request.future.done():
                    r.request.future.set_result(r.run.result)
            else:
                keep.append(r)
        self._running = keep
