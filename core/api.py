"""The Python API: ``Runtime.load(model)`` then ``runtime.ask(prompt, strategy=..., budget=...)``.

One path for every query: the prompt becomes tokens (in the caller's thread), and
the runtime's :class:`~edgescale.strategies.scheduler.Scheduler` plans it when it
reaches the head of the queue (a :class:`~edgescale.strategies.planner.Plan` of
strategy objects, KV size and predictions, made from the load of the moment) and
runs it in the shared decode loop with whatever else is running. ``ask`` is safe to
call from several threads at once; ``ask_async`` awaits in an asyncio task.
Strategy and budget defaults are the CLI's: no strategy and no budget is
``single``; a budget alone is ``auto`` (``edgescale.settings.resolve_strategy``).

Planning never measures the device: without a cached speed profile the planner
uses a conservative estimate (``devices.estimate``) and ``notify`` hears about it
once; ``calibrate()`` (or ``edgescale devices --calibrate``) measures it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

from edgescale.errors import EmptyPrompt, UsageError
from edgescale.runtime.backends import BackendRegistry, LoadRequest, default_backends
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.settings import AskOptions, resolve_strategy
from edgescale.strategies.planner import Budget, Plan
from edgescale.strategies.result import Result
from edgescale.strategies.scheduler import Request, Scheduler, SchedulerConfig
from edgescale.strategies.spec import Strategy

if TYPE_CHECKING:
    from concurrent.futures import Future

    from edgescale.runtime.auto_backend import BackendChoice
    from edgescale.devices.profile import DeviceProfile
    from edgescale.strategies.policy import AutoPolicy
    from edgescale.strategies.runner import Query

__all__ = ["AskOptions", "Budget", "Prompt", "Runtime", "load_engine"]

Prompt = Union[str, Sequence[Mapping[str, str]]]  # text, or chat messages


def load_engine(
    model: str | Path | None = None,
    *,
    backend: str = "llama.cpp",
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    registry: BackendRegistry | None = None,
    notify: Callable[[str], None] | None = None,
    width: int = 1,
) -> Engine:
    """Resolve a model reference and load it on the named backend (``registry``: the
    built-in backends unless given). ``threads`` None: the cores free right now; more
    threads than the machine has are cut to its core count (``notify`` hears why).
    ``n_gpu_layers`` None: as many as fit the GPU (none on a CPU-only build)."""
    from edgescale.devices.cpu import clamp_threads, default_threads

    n_threads = default_threads() if threads is None else threads
    n_threads, note = clamp_threads(n_threads)
    if note is not None and notify is not None:
        notify(note)
    backends = registry if registry is not None else default_backends()
    return backends.load(backend, LoadRequest(model=model, threads=n_threads, n_gpu_layers=n_gpu_layers,
                                              width=width))


class Runtime:
    """A loaded model plus the strategy layer.

    ``notify`` (if set) receives one-line notices, e.g. that plans use an estimated
    speed profile until this device is measured. ``profile``: the device profile to
    plan with (default: the cached measurement, else the estimate).
    """

    def __init__(self, engine: Engine, model_name: str = "", notify: Callable[[str], None] | None = None,
                 profile: DeviceProfile | None = None, scheduler: SchedulerConfig = SchedulerConfig()) -> None:
        self.engine = engine
        self.model_name = model_name or engine.info.name
        self.notify = notify
        self._profile: DeviceProfile | None = profile
        self._scheduler_config = scheduler
        self._scheduler: Scheduler | None = None
        self._lock = threading.Lock()
        self.backend_choice: BackendChoice | None = None  # set when loaded with backend="auto"
        self.policy: AutoPolicy | None = None  # auto's policy (None: the default, with a notice)
        self._policy_noted = False
        self._policies: dict[str, AutoPolicy] = {}  # tuned policies by task name, as loaded

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        backend: str = "llama.cpp",
        threads: int | None = None,
        n_gpu_layers: int | None = None,
        registry: BackendRegistry | None = None,
        notify: Callable[[str], None] | None = None,
        scheduler: SchedulerConfig = SchedulerConfig(),
        width: int = 1,
    ) -> "Runtime":
        """``backend="auto"``: the backend this device's measured profiles favour at ``width``
        sequences a step (:attr:`backend_choice` says which and why)."""
        from edgescale.runtime.backends import default_backends

        from edgescale.devices.cpu import clamp_threads, default_threads

        backends = registry if registry is not None else default_backends()
        n_threads, note = clamp_threads(default_threads() if threads is None else threads)
        if note is not None and notify is not None:
            notify(note)
        choice = None
        if backends.canonical(backend) == "auto":
            from edgescale.runtime.auto_backend import choose_backend

            choice = choose_backend(model, threads=n_threads, width=width)
            backend, model = choice.name, choice.model
        engine = load_engine(model, backend=backend, threads=n_threads, n_gpu_layers=n_gpu_layers,
                             registry=backends, width=width)
        rt = cls(engine, str(model) if model else "", notify=notify, scheduler=scheduler)
        rt.backend_choice = choice
        return rt

    def use_policy(self, policy: str | AutoPolicy | None) -> AutoPolicy | None:
        """Make ``auto`` use a policy: the one ``edgescale tune`` fitted for this model and the
        task named, or one given (None: the default policy). UsageError when there is none."""
        from edgescale.strategies.policy import AutoPolicy

        if isinstance(policy, str):
            policy = self.tuned_policy(policy)
        assert policy is None or isinstance(policy, AutoPolicy)
        self.policy = policy
        self._policy_noted = self.policy is not None
        return self.policy

    def tuned_policy(self, task: str) -> AutoPolicy:
        """The policy ``edgescale tune`` fitted for this model and ``task`` (read once)."""
        from edgescale.strategies.policy import load_policy

        with self._lock:
            if task not in self._policies:
                self._policies[task] = load_policy(self.engine.info.path.name, task)
            return self._policies[task]

    def configure_scheduler(self, config: SchedulerConfig) -> None:
        """Set how the shared decode loop runs; only before the first query."""
        with self._lock:
            if self._scheduler is not None:
                raise UsageError("the scheduler is already running")
            self._scheduler_config = config

    @property
    def scheduler(self) -> Scheduler:
        """The shared decode loop (started on first use)."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.engine, self._scheduler_config)
            return self._scheduler

    def close(self) -> None:
        with self._lock:
            sched, self._scheduler = self._scheduler, None
        if sched is not None:
            sched.close()
        self.engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt_tokens(self, prompt: Prompt, options: AskOptions = AskOptions()) -> list[int]:
        """A prompt's tokens: a string (with ``options.system`` before it), or chat messages
        ({"role", "content"} mappings), through the chat template unless ``options.chat`` is off."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise EmptyPrompt("empty prompt")
            tokens = self.engine.format_prompt(prompt, chat=options.chat, system=options.system)
        else:
            if not any(str(m.get("content") or "").strip() for m in prompt):
                raise EmptyPrompt("empty prompt: the messages have no content")
            tokens = self.engine.format_messages(prompt, chat=options.chat)
        n_ctx = self.engine.info.n_ctx_train
        if len(tokens) >= n_ctx:
            from edgescale.errors import ContextOverflow

            raise ContextOverflow(f"prompt is {len(tokens)} tokens; the model's context holds {n_ctx}")
        return tokens

    def profile(self) -> DeviceProfile:
        """The device profile the planner uses: the measured one cached for this engine,
        else a conservative estimate (never a measurement: that is :meth:`calibrate`)."""
        with self._lock:
            return self._profile_locked()

    def _profile_locked(self) -> DeviceProfile:
        if self._profile is not None:
            return self._profile
        from edgescale.devices.estimate import estimated_profile
        from edgescale.devices.profile import cached_profile

        prof = cached_profile(self.engine)
        if prof is None:
            prof = estimated_profile(self.engine)
            if self.notify is not None:
                self.notify("this device has no measured speed profile for this model yet: budgets are planned "
                            "from a conservative estimate; `edgescale devices --calibrate` measures it "
                            "(about a minute)")
        self._profile = prof
        return prof

    def calibrate(self) -> DeviceProfile:
        """Measure this device's speed profile for the engine now (cached on disk)."""
        from edgescale.devices.profile import load_or_calibrate

        with self._lock:
            if self._scheduler is not None and (self._scheduler.running or self._scheduler.queued):
                raise UsageError("calibration needs the engine to itself: wait for the running queries")
            self._profile = load_or_calibrate(self.engine, refresh=True)
            return self._profile

    def plan(self, prompt: Prompt, *, strategy: str | Strategy | None = None, budget: Budget | None = None,
             options: AskOptions | None = None, **overrides: Any) -> Plan:
        """What ``ask`` would run for this prompt, without running it."""
        opts = replace(options or AskOptions(), **overrides)
        return self._plan(self.prompt_tokens(prompt, opts), strategy, budget or Budget(), opts)

    def _plan(self, tokens: Sequence[int], strategy: str | Strategy | None, budget: Budget,
              opts: AskOptions, others: int = 0) -> Plan:
        """Plan a query that will share each step with ``others`` live sequences."""
        from edgescale.runtime.memory import memory_model
        from edgescale.strategies.planner import QueryShape, SharedTiming, plan
        from edgescale.strategies.spec import Auto

        budgeted = budget.deadline_s is not None or budget.memory_bytes is not None
        strat = resolve_strategy(strategy, None, budgeted=budgeted)
        timed = isinstance(strat, Auto) or budget.deadline_s is not None
        shape = QueryShape(prompt_tokens=len(tokens), max_new_tokens=opts.max_tokens, strategy=strat,
                           context_cells=self.engine.info.n_ctx_train or None)
        timing = SharedTiming(self.profile(), others) if timed else None
        if isinstance(strat, Auto) and strat.policy is not None:
            return plan(shape, timing, memory_model(self.engine), budget, self.tuned_policy(strat.policy))
        chosen = plan(shape, timing, memory_model(self.engine), budget, self.policy)
        if isinstance(strat, Auto) and not self._policy_noted:
            self._policy_noted = True
            if self.notify is not None:
                self.notify("auto: no tuned policy for this model and task (--policy NAME, after `edgescale tune "
                            "--task NAME`); using the default one, fitted on the packaged arithmetic questions")
        return chosen

    def request(
        self,
        prompt: Prompt,
        *,
        strategy: str | Strategy | None = None,
        budget: Budget | None = None,
        options: AskOptions | None = None,
        on_step: Callable[[BatchGenerator, Sequence[TokenEvent]], None] | None = None,
        arrival: float | None = None,
        **overrides: Any,
    ) -> Request:
        """The query as the scheduler takes it (tokenized now; planned when admitted).
        ``arrival``: when it arrived (``time.perf_counter()``; default now): its deadline
        counts from then."""
        from edgescale.strategies.runner import Query, generation_config

        arrival = time.perf_counter() if arrival is None else arrival
        opts = replace(options or AskOptions(), **overrides)
        tokens = self.prompt_tokens(prompt, opts)
        budget = budget or Budget()

        def prepare(others: int, waited: float) -> Query:
            left = None if budget.deadline_s is None else max(1e-3, budget.deadline_s - waited)
            chosen = self._plan(tokens, strategy, replace(budget, deadline_s=left), opts, others)
            profile = self._profile if chosen.predicted_s is not None else None
            return Query(
                prompt_tokens=tokens, plan=chosen,
                config=generation_config(chosen.strategy, opts, chosen.max_new_tokens),
                answer_kind=opts.answer, choices=opts.choices, deadline_s=budget.deadline_s,
                model_name=self.model_name, step_time=profile.step_time if profile is not None else None,
            )

        return Request(prompt_tokens=tokens, prepare=prepare, deadline_s=budget.deadline_s, on_step=on_step,
                       arrival=arrival)

    def submit(self, prompt: Prompt, **kwargs: Any) -> Future[Result]:
        """Queue a query and return at once: a future of its result (see :meth:`ask`)."""
        return self.scheduler.submit(self.request(prompt, **kwargs))

    async def ask_async(self, prompt: Prompt, **kwargs: Any) -> Result:
        """:meth:`ask` for asyncio: the query runs in the shared loop while the task awaits."""
        import asyncio

        return await asyncio.wrap_future(self.submit(prompt, **kwargs))

    def ask(self, prompt: Prompt, **kwargs: Any) -> Result:
        """Answer one prompt; the arguments are :meth:`request`'s: ``strategy`` (None: single, or
        auto when a budget is given), ``budget``, ``options`` or AskOptions fields as keywords
        (max_tokens=..., seed=...), and ``on_step`` (called in the scheduler's thread after
        every step of this query)."""
        return self.submit(prompt, **kwargs).result()
