"""The Python API: ``Runtime.load(model)`` then ``runtime.ask(prompt, strategy=..., budget=...)``.

One path for every query: the prompt becomes tokens, the planner makes a
:class:`~edgescale.strategies.planner.Plan` (strategy objects, KV size,
predictions), and ``strategies.runner.run_query`` runs it. Strategy and budget
defaults are the CLI's: no strategy and no budget is ``single``; a budget
alone is ``auto`` (``edgescale.settings.resolve_strategy``).

Planning never measures the device: without a cached speed profile the planner
uses a conservative estimate (``devices.estimate``) and ``notify`` hears about it
once; ``calibrate()`` (or ``edgescale devices --calibrate``) measures it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgescale.errors import EmptyPrompt
from edgescale.runtime.backends import BackendRegistry, LoadRequest, default_backends
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.settings import AskOptions, resolve_strategy
from edgescale.strategies.planner import Budget, Plan
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Strategy

if TYPE_CHECKING:
    from edgescale.devices.profile import DeviceProfile

__all__ = ["AskOptions", "Budget", "Runtime", "load_engine"]


def load_engine(
    model: str | Path | None = None,
    *,
    backend: str = "llama.cpp",
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    registry: BackendRegistry | None = None,
    notify: Callable[[str], None] | None = None,
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
    return backends.load(backend, LoadRequest(model=model, threads=n_threads, n_gpu_layers=n_gpu_layers))


class Runtime:
    """A loaded model plus the strategy layer.

    ``notify`` (if set) receives one-line notices, e.g. that plans use an estimated
    speed profile until this device is measured. ``profile``: the device profile to
    plan with (default: the cached measurement, else the estimate).
    """

    def __init__(self, engine: Engine, model_name: str = "", notify: Callable[[str], None] | None = None,
                 profile: DeviceProfile | None = None) -> None:
        self.engine = engine
        self.model_name = model_name or engine.info.name
        self.notify = notify
        self._profile: DeviceProfile | None = profile

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
    ) -> "Runtime":
        engine = load_engine(model, backend=backend, threads=threads, n_gpu_layers=n_gpu_layers,
                             registry=registry, notify=notify)
        return cls(engine, str(model) if model else "", notify=notify)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt_tokens(self, prompt: str, options: AskOptions = AskOptions()) -> list[int]:
        if not prompt or not prompt.strip():
            raise EmptyPrompt("empty prompt")
        tokens = self.engine.format_prompt(prompt, chat=options.chat, system=options.system)
        n_ctx = self.engine.info.n_ctx_train
        if len(tokens) >= n_ctx:
            from edgescale.errors import ContextOverflow

            raise ContextOverflow(f"prompt is {len(tokens)} tokens; the model's context holds {n_ctx}")
        return tokens

    def profile(self) -> DeviceProfile:
        """The device profile the planner uses: the measured one cached for this engine,
        else a conservative estimate (never a measurement: that is :meth:`calibrate`)."""
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

        self._profile = load_or_calibrate(self.engine, refresh=True)
        return self._profile

    def plan(self, prompt: str, *, strategy: str | Strategy | None = None, budget: Budget | None = None,
             options: AskOptions | None = None, **overrides: Any) -> Plan:
        """What ``ask`` would run for this prompt, without running it."""
        opts = replace(options or AskOptions(), **overrides)
        return self._plan(self.prompt_tokens(prompt, opts), strategy, budget or Budget(), opts)

    def _plan(self, tokens: Sequence[int], strategy: str | Strategy | None, budget: Budget,
              opts: AskOptions) -> Plan:
        from edgescale.runtime.memory import memory_model
        from edgescale.strategies.planner import QueryShape, plan
        from edgescale.strategies.spec import Auto

        budgeted = budget.deadline_s is not None or budget.memory_bytes is not None
        strat = resolve_strategy(strategy, None, budgeted=budgeted)
        timed = isinstance(strat, Auto) or budget.deadline_s is not None
        shape = QueryShape(prompt_tokens=len(tokens), max_new_tokens=opts.max_tokens, strategy=strat,
                           context_cells=self.engine.info.n_ctx_train or None)
        return plan(shape, self.profile() if timed else None, memory_model(self.engine), budget)

    def ask(
        self,
        prompt: str,
        *,
        strategy: str | Strategy | None = None,
        budget: Budget | None = None,
        options: AskOptions | None = None,
        on_step: Callable[[BatchGenerator, Sequence[TokenEvent]], None] | None = None,
        **overrides: Any,
    ) -> Result:
        """Answer one prompt. ``strategy`` None: single, or auto when a budget is given.
        ``overrides`` are AskOptions fields (max_tokens=..., seed=...)."""
        import time

        from edgescale.strategies.runner import Query, generation_config, run_query

        t0 = time.perf_counter()
        opts = replace(options or AskOptions(), **overrides)
        tokens = self.prompt_tokens(prompt, opts)
        budget = budget or Budget()
        chosen = self._plan(tokens, strategy, budget, opts)
        # tokenizing and planning count against the deadline (no measurement happens here)
        deadline = None if budget.deadline_s is None else budget.deadline_s - (time.perf_counter() - t0)
        profile = self._profile if chosen.predicted_s is not None else None
        query = Query(
            prompt_tokens=tokens, plan=chosen,
            config=generation_config(chosen.strategy, opts, chosen.max_new_tokens),
            answer_kind=opts.answer, choices=opts.choices, deadline_s=deadline, model_name=self.model_name,
            step_time=profile.step_time if profile is not None else None,
        )
        return run_query(self.engine, query, on_step=on_step)
