"""The Python API: ``Runtime.load(model)`` then ``runtime.ask(prompt, strategy=..., budget=...)``.

One path for every query: the prompt becomes tokens (in the caller's thread) and a
:class:`~edgescale.scheduler.request.Request` holding everything its plan is made
from (its :class:`~edgescale.deadline.Deadline`, made here once; the auto policy; the
device profile when the plan needs times). The runtime's
:class:`~edgescale.scheduler.loop.Scheduler` plans it when it reaches the head of the
queue (from the load of that moment) and runs it in the shared decode loop with
whatever else is running. ``ask`` is safe to call from several threads at once;
``ask_async`` awaits in an asyncio task. Strategy and budget defaults are the CLI's:
no strategy and no budget is ``single``; a budget alone is ``auto``
(``edgescale.settings.resolve_strategy``).

One assembly: :meth:`Runtime.open` takes a :class:`RuntimeSpec` (model, backend,
threads, lanes ``N`` or auto, policy, scheduler settings) and is what ``batch``,
``serve``, ``bench``, the Ray workers and :meth:`Runtime.load` all call.

Planning never measures the device: without a cached speed profile the planner
uses a conservative estimate (``devices.estimate``) and ``notify`` hears about it
once; ``calibrate()`` (or ``edgescale devices --calibrate``) measures it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from edgescale import limits
from edgescale.deadline import Deadline
from edgescale.errors import UsageError
from edgescale.loader import BackendChoice, LoadSpec, load_engine
from edgescale.runtime.backends import BackendRegistry
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.runtime.kv_types import F16, KvType
from edgescale.runtime.prompt_format import Prompt, prompt_tokens
from edgescale.scheduler.config import SchedulerConfig
from edgescale.scheduler.loop import Scheduler
from edgescale.scheduler.request import Request, plan_request
from edgescale.settings import AskOptions, AskSettings, overrides_of, resolve_strategy
from edgescale.strategies.kv_choice import KvChoice
from edgescale.strategies.planner import Budget, Plan
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Auto, Single, Strategy, samples_of

if TYPE_CHECKING:
    from concurrent.futures import Future

    from edgescale.devices.profile import DeviceProfile
    from edgescale.strategies.policy import AutoPolicy

__all__ = ["AskOptions", "Budget", "LoadSpec", "Prompt", "Runtime", "RuntimeSpec", "load_engine"]



@dataclass(frozen=True)
class RuntimeSpec(LoadSpec):
    """What to load (:class:`~edgescale.loader.LoadSpec`: model, backend, threads, GPU layers)
    and how its shared decode loop runs (picklable: Ray workers get one). ``width`` None:
    lanes x the defaults' samples."""
    # queries decoding at once: N, "auto" (the device profile and the memory budget), or None (as
    # ``scheduler`` says); N and auto size the shared context for that many
    lanes: int | Literal["auto"] | None = None
    scheduler: SchedulerConfig = SchedulerConfig()  # the loop's other settings
    policy: str | None = None  # auto's tuned policy, by task name (None: the default policy)
    reserve_tokens: int = 0  # size the shared context up front for ``lanes`` queries of this many tokens
    kv_layout: str = "auto"  # unified, streams, or auto (strategies.planner.kv_layout_for)
    deterministic: bool = False  # a query's tokens do not depend on what else runs (the exact layout)
    kv_type: str = limits.DEFAULT_KV_TYPE  # the shared cache's element types: f16, q8_0, q4_0, K/V, or auto


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
        self._cue_tokens: int | None = None
        self.kv_choice: KvChoice | None = None  # the shared cache's types and why (set by use_kv_type)
        self._kv_pending: str | None = None  # a --kv-type the first request resolves (auto needs its plan)

    @classmethod
    def open(cls, spec: RuntimeSpec, defaults: AskSettings | None = None, *,
             registry: BackendRegistry | None = None, notify: Callable[[str], None] | None = None) -> "Runtime":
        """The one assembly: load ``spec.model``, use its policy, and size the shared decode
        loop for ``spec.lanes`` queries (auto: enough queries that a step reaches the width
        with the best throughput in the device profile, as many as ``defaults``' memory
        budget allows). ``defaults``: what a typical query asks for (its strategy's
        samples size the lanes and the expected width)."""
        settings = defaults or AskSettings(Single(), Budget(), AskOptions())
        per_query = max(1, samples_of(settings.strategy))
        width = spec.width if spec.width is not None else per_query * (
            spec.lanes if isinstance(spec.lanes, int) else 8)
        engine, choice = load_engine(replace(spec, width=width), registry=registry, notify=notify)
        rt = cls(engine, str(spec.model) if spec.model else "", notify=notify)
        rt.backend_choice = choice
        try:
            rt.use_policy(spec.policy)
            guess = rt._kv_layout(spec, spec.lanes if isinstance(spec.lanes, int) else 8)
            rt.configure_scheduler(replace(spec.scheduler, kv_layout=guess))
            typical = rt.request("What is the answer?", strategy=settings.strategy, budget=settings.budget,
                                 options=settings.options)
            rt.use_kv_type(spec.kv_type, typical)
            config = replace(spec.scheduler, kv_type=rt.scheduler_config.kv_type)
            if spec.lanes is not None:
                lanes = rt.auto_lanes(settings) if spec.lanes == "auto" else spec.lanes
                config = replace(config, max_running=lanes, expect_running=lanes,
                                 min_cells=max(config.min_cells, lanes * spec.reserve_tokens),
                                 stream_cells=max(config.stream_cells, spec.reserve_tokens))
            rt.configure_scheduler(replace(config, kv_layout=rt._kv_layout(spec, config.expect_running)))
            if rt.scheduler_config.kv_layout == "exact":
                rt._check_exact()
        except BaseException:
            rt.close()
            raise
        return rt

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
        kv_type: str = limits.DEFAULT_KV_TYPE,
    ) -> "Runtime":
        """Load a model with one query decoding at a time unless ``scheduler`` says otherwise
        (:meth:`open` with a :class:`RuntimeSpec`). ``backend="auto"``: the backend this
        device's measured profiles favour at ``width`` sequences a step
        (:attr:`backend_choice` says which and why)."""
        spec = RuntimeSpec(model=str(model) if model is not None else None, backend=backend, threads=threads,
                           gpu_layers=n_gpu_layers, scheduler=scheduler, width=width)
        rt = cls.open(spec, registry=registry, notify=notify)
        rt._kv_pending = kv_type  # (open fixed f16 for a query without a budget: the first request decides)
        rt.kv_choice = None
        return rt

    def _kv_layout(self, spec: RuntimeSpec, lanes: int) -> str | None:
        """The shared loop's KV layout (``kv_layout_for``); the exact one only where this model's
        kernels compute a row the same at every batch width on this CPU."""
        from edgescale.strategies.planner import kv_layout_for

        return kv_layout_for(spec.kv_layout, lanes=lanes, available=list(self.engine.kv_layouts),
                             deterministic=spec.deterministic)

    def _check_exact(self) -> None:
        """UsageError unless this model's kernels compute a row the same at every batch width
        here (measured in the loop's thread, like every decode)."""
        from edgescale.runtime.invariance import width_variance

        variance = self.scheduler.call(width_variance).result()
        if variance > 0:
            raise UsageError(f"--deterministic cannot hold for this model here: its kernels round by batch width "
                             f"on this CPU (a logit moves by up to {variance:.2g} beside other sequences); use a "
                             "Q4_0 or Q4_1 model, or leave --deterministic off")

    def auto_lanes(self, settings: AskSettings) -> int:
        """Queries in flight for ``--parallel auto``: enough that the batch reaches the width
        with the best throughput in the device profile, as many as the memory budget allows."""
        from edgescale.runtime.memory import memory_model
        from edgescale.scheduler.config import cells_in_budget
        from edgescale.strategies.planner import best_wave

        per_query = max(1, samples_of(settings.strategy))
        lanes = max(1, best_wave(self.profile(), limits.MAX_SAMPLES) // per_query)
        if settings.budget.memory_bytes is not None:
            one = self.plan("What is the answer?", strategy=settings.strategy, budget=settings.budget,
                            options=settings.options)
            room = cells_in_budget(memory_model(self.engine, self._scheduler_config.kv_layout,
                                                self._scheduler_config.kv_type), settings.budget.memory_bytes,
                                   n_ids=lanes * per_query, max_batch=256)
            lanes = max(1, min(lanes, room // max(1, one.n_cells)))
        return min(lanes, limits.MAX_PARALLEL)

    def use_policy(self, policy: str | AutoPolicy | None) -> AutoPolicy | None:
        """Make ``auto`` use a policy: the one ``edgescale tune`` fitted for this model and the
        task named, or one given (None: the default policy). UsageError when there is none."""
        self.policy = self.tuned_policy(policy) if isinstance(policy, str) else policy
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
    def scheduler_config(self) -> SchedulerConfig:
        """How the shared decode loop runs (``max_running``: the queries decoding at once)."""
        return self._scheduler_config

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
        ({"role", "content"} mappings), through the chat template unless ``options.chat`` is off
        (with the functions ``options.tools`` offers: ``runtime.prompt_format``)."""
        return prompt_tokens(self.engine, prompt, chat=options.chat, system=options.system, tools=options.tools,
                             tools_prompt=options.tools_prompt)

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
        profile = self.scheduler.call(lambda engine: load_or_calibrate(engine, refresh=True)).result()
        with self._lock:
            self._profile = profile
        return profile

    def plan(self, prompt: Prompt, *, strategy: str | Strategy | None = None, budget: Budget | None = None,
             options: AskOptions | None = None, **overrides: Any) -> Plan:
        """What ``ask`` would run for this prompt, without running it."""
        from edgescale.runtime.memory import memory_model

        request = self.request(prompt, strategy=strategy, budget=budget, options=options, **overrides)
        # the shared loop's layout and cache types
        memory = memory_model(self.engine, self._scheduler_config.kv_layout, self._scheduler_config.kv_type)
        chosen = plan_request(request, memory, others=0, now=request.arrival).plan
        self._planned(request)
        return chosen

    def use_kv_type(self, requested: str, request: Request | None = None) -> KvChoice:
        """Fix the shared cache's element types; only before the first query (the shared context
        has one). A type (``q8_0``, ``q8_0/f16``...) the engine refuses is a UsageError. ``auto``:
        :func:`~edgescale.strategies.planner.kv_type_for` for ``request`` (its plan under its
        memory budget; None: f16), lossy types only where their measured cost on this device
        (``devices.kv_costs``) is within the stored bound."""
        from edgescale.runtime.kv_types import parse_kv_type

        own = KvType(self.engine.memory_layout.kv_type, self.engine.memory_layout.kv_type)
        if requested.strip().lower() != "auto":
            kv = parse_kv_type(requested)
            refusal = self.engine.kv_type_refusal(kv)
            if refusal is not None:
                raise UsageError(refusal)
            choice = KvChoice(kv, "as asked (--kv-type)")
        elif self.engine.kv_type_refusal(F16) is not None:
            choice = KvChoice(own, f"the {self.engine.backend_name} backend's own cache type")
        elif request is None:
            choice = KvChoice(F16, "no query to plan for: f16, lossless")
        else:
            choice = self._auto_kv_type(request)
        self.configure_scheduler(replace(self._scheduler_config, kv_type=choice.kv_type))
        self.kv_choice, self._kv_pending = choice, None
        return choice

    def _auto_kv_type(self, request: Request) -> KvChoice:
        from edgescale.devices.kv_costs import CALIBRATED_TYPES, load_kv_costs
        from edgescale.runtime.kv_types import parse_kv_type
        from edgescale.runtime.memory import memory_model
        from edgescale.scheduler.request import request_inputs
        from edgescale.strategies.kv_choice import kv_type_for

        costs = load_kv_costs(self.engine) if request.memory_bytes is not None else None
        candidates = []
        for name in CALIBRATED_TYPES:
            kv = parse_kv_type(name)
            why = self.engine.kv_type_refusal(kv) or (costs.refusal(kv) if costs is not None else None)
            candidates.append((kv, why))
        shape, timing, budget = request_inputs(request, others=0, now=request.arrival)
        layout = self._scheduler_config.kv_layout
        choice = kv_type_for(shape, timing, lambda kv: memory_model(self.engine, layout, kv), budget,
                             request.policy, candidates)
        if choice.kv_type.lossy and costs is not None:
            choice = replace(choice, reason=f"{choice.reason} ({costs.describe(choice.kv_type)})")
        return choice

    def _resolve_pending_kv(self, request: Request) -> None:
        """The first request fixes a pending ``--kv-type`` (auto: for its plan)."""
        with self._lock:
            pending, started = self._kv_pending, self._scheduler is not None
        if pending is None:
            return
        if started:  # the loop already runs with the type it was opened with
            kv = self._scheduler_config.kv_type or F16
            self.kv_choice, self._kv_pending = KvChoice(kv, "the shared loop was already running"), None
            return
        self.use_kv_type(pending, request)

    def _policy_for(self, strategy: Strategy) -> AutoPolicy | None:
        """auto's policy: the one a spec names (``auto:policy=NAME``), else the runtime's."""
        if not isinstance(strategy, Auto):
            return None
        return self.tuned_policy(strategy.policy) if strategy.policy is not None else self.policy

    def _planned(self, request: Request) -> None:
        """A request was planned: the first auto query planned with the default policy says so once."""
        if isinstance(request.strategy, Auto) and request.policy is None and not self._policy_noted:
            self._policy_noted = True
            if self.notify is not None:
                self.notify("auto: no tuned policy for this model and task (--policy NAME, after `edgescale tune "
                            "--task NAME`); using the default one, fitted on the packaged arithmetic questions")

    def cue_tokens(self) -> int:
        """Tokens of the probes' answer cue on this engine (what a probe's KV room counts)."""
        if self._cue_tokens is None:
            from edgescale.strategies.early_exit import ANSWER_CUE

            self._cue_tokens = len(self.engine.tokenize(ANSWER_CUE, add_special=False, parse_special=False))
        return self._cue_tokens

    def request(
        self,
        prompt: Prompt,
        *,
        strategy: str | Strategy | None = None,
        budget: Budget | None = None,
        options: AskOptions | None = None,
        on_step: Callable[[BatchGenerator, Sequence[TokenEvent]], None] | None = None,
        arrival: float | None = None,
        exact_samples: bool = False,
        **overrides: Any,
    ) -> Request:
        """The query as the scheduler takes it (tokenized now; planned when admitted).
        ``arrival``: when it arrived (``time.perf_counter()``; default now): its deadline
        (``budget.deadline_s``) counts from then. ``exact_samples``: the planner may not
        draw fewer samples than the strategy asks for to fit the context or the memory
        budget; it fails with :class:`BudgetInfeasible` saying what fits instead."""
        deadline = Deadline.after(budget.deadline_s if budget is not None else None, arrival)
        opts = replace(options or AskOptions(), **overrides_of(options, overrides))
        n_vocab = self.engine.info.n_vocab
        if opts.logit_bias and opts.logit_bias[-1][0] >= n_vocab:
            raise UsageError(f"logit_bias: token {opts.logit_bias[-1][0]} is not in the model's vocabulary "
                             f"(0 to {n_vocab - 1})")
        tokens = self.prompt_tokens(prompt, opts)
        budget = budget or Budget()
        strat = resolve_strategy(strategy, None, budgeted=deadline.bounded or budget.memory_bytes is not None)
        timed = isinstance(strat, Auto) or deadline.bounded
        request = Request(
            prompt_tokens=tokens, strategy=strat, options=opts, deadline=deadline, memory_bytes=budget.memory_bytes,
            answer_kind=opts.answer, choices=opts.choices, policy=self._policy_for(strat),
            timing=self.profile() if timed else None, cue_tokens=self.cue_tokens(),
            context_cells=self.engine.info.n_ctx_train or None, model_name=self.model_name, on_step=on_step,
            exact_samples=exact_samples,
        )
        self._resolve_pending_kv(request)
        return request

    def submit(self, prompt: Prompt, **kwargs: Any) -> Future[Result]:
        """Queue a query and return at once: a future of its result (see :meth:`ask`)."""
        request = self.request(prompt, **kwargs)
        future = self.scheduler.submit(request)
        future.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._planned(request))
        return future

    async def ask_async(self, prompt: Prompt, **kwargs: Any) -> Result:
        """:meth:`ask` for asyncio: the query runs in the shared loop while the task awaits."""
        import asyncio

        return await asyncio.wrap_future(self.submit(prompt, **kwargs))

    def ask(self, prompt: Prompt, **kwargs: Any) -> Result:
        """Answer one prompt; the arguments are :meth:`request`'s: ``strategy`` (None: single, or
        auto when a budget is given), ``budget``, ``options`` or AskOptions fields as keywords
        (max_tokens=..., seed=..., answer="number:tail"), ``response_format`` (structured output:
        a JSON schema, regex, choices or grammar; see ``runtime.constraints.response_format_constraint``;
        a Pydantic model class), and ``on_step`` (called in the scheduler's thread after every
        step of this query)."""
        request = self.request(prompt, **kwargs)
        result = self.scheduler.submit(request).result()
        self._planned(request)  # (in the caller's thread: before the answer is printed)
        return result
