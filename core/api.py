"""The Python API: ``Runtime.load(model)`` then ``runtime.ask(prompt, strategy=..., budget=...)``."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from edgescale.errors import EmptyPrompt, UsageError
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.runtime.sampling import SamplingConfig
from edgescale.strategies.planner import Budget, Plan
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Auto, Majority, Single, Strategy, parse_strategy

DEFAULT_TEMPERATURE = 0.8  # for strategies that draw several samples
BACKENDS = ("llama.cpp", "onnx")


def draws_one_sample(strategy: Strategy) -> bool:
    return isinstance(strategy, Single) or getattr(strategy, "k", 0) == 1


@dataclass(frozen=True)
class AskOptions:
    """Per-query generation options (validated at the CLI/file boundary)."""

    max_tokens: int = 256
    temperature: float | None = None  # None: greedy for single, 0.8 otherwise
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = 0
    stop: tuple[str, ...] = ()
    system: str | None = None
    chat: bool = True
    answer: str = "auto"
    choices: tuple[str, ...] = ()

    def sampling_for(self, strategy: Strategy) -> SamplingConfig:
        temp = self.temperature
        if temp is None:  # one sample: greedy; several: they must differ
            temp = 0.0 if draws_one_sample(strategy) else DEFAULT_TEMPERATURE
        return SamplingConfig(temperature=temp, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p)


def auto_gpu_layers(path: Path) -> int:
    """Layers to offload: 0 on a CPU-only llama.cpp build; otherwise as many as fit the
    free VRAM with a KV cache of 4096 cells (devices.placement decides)."""
    from edgescale.runtime import _llama_ffi

    if not _llama_ffi.backend().supports_gpu_offload():
        return 0
    from edgescale.devices.hardware import describe
    from edgescale.devices.placement import place
    from edgescale.models.info import read_model_info

    info = read_model_info(path)
    return place(describe(measure_load=False), info, kv_bytes=info.kv_bytes(4096)).n_gpu_layers


def load_engine(
    model: str | Path | None = None,
    *,
    backend: str = "llama.cpp",
    threads: int | None = None,
    n_gpu_layers: int | None = None,
) -> Engine:
    """Resolve a model name or path and load it on the chosen backend.
    ``n_gpu_layers`` None: as many as fit the GPU (none on a CPU-only build)."""
    from edgescale.devices.cpu import default_threads

    n_threads = threads if threads is not None else default_threads()
    if backend in ("llama.cpp", "llama_cpp", "llamacpp"):
        from edgescale.models.catalog import resolve_model
        from edgescale.runtime.llama_engine import LlamaCppEngine

        from edgescale.devices.buildcheck import ensure_runs

        path = resolve_model(model)
        ensure_runs(path)  # before anything loads llama.cpp into this process
        layers = auto_gpu_layers(path) if n_gpu_layers is None else n_gpu_layers
        return LlamaCppEngine.load(path, n_threads=n_threads, n_gpu_layers=layers)
    if backend in ("onnx", "onnxruntime"):
        from edgescale.runtime.onnx_engine import OnnxEngine

        if model is None:
            raise UsageError("the onnx backend needs a model directory (made by `edgescale convert`)")
        return OnnxEngine.load(Path(model), n_threads=n_threads)
    raise UsageError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


class Runtime:
    """A loaded model plus the strategy layer.

    ``notify`` (if set) receives one-line progress messages, e.g. that the device
    is being measured for the planner (once per model, backend and thread count).
    """

    def __init__(self, engine: Engine, model_name: str = "", notify: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.model_name = model_name or engine.info.name
        self.notify = notify
        self._profile: Any = None

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        backend: str = "llama.cpp",
        threads: int | None = None,
        n_gpu_layers: int | None = None,
    ) -> "Runtime":
        engine = load_engine(model, backend=backend, threads=threads, n_gpu_layers=n_gpu_layers)
        return cls(engine, str(model) if model else "")

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

    def profile(self, *, refresh: bool = False) -> Any:
        """The device profile for this engine (measured once, then cached on disk)."""
        from edgescale.devices import profile as prof

        if self._profile is not None and not refresh:
            return self._profile
        key, backend, version, threads, layers = prof.engine_identity(self.engine)
        cached = None if refresh else prof.load_profile(prof.cache_path(key, backend, threads, layers))
        if cached is None and self.notify is not None:
            self.notify(f"measuring this device for the planner ({backend}, {threads} threads); "
                        "once per model, takes about a minute")
        self._profile = prof.load_or_calibrate(self.engine, refresh=refresh)
        return self._profile

    def plan(self, prompt: str, *, strategy: str | Strategy = "auto", budget: Budget | None = None,
             options: AskOptions | None = None, **overrides: Any) -> Plan:
        """What ``ask`` would run for this prompt, without running it."""
        opts = replace(options or AskOptions(), **overrides)
        strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        return self._plan(self.prompt_tokens(prompt, opts), strat, budget or Budget(), opts)

    def _plan(self, tokens: list[int], strat: Strategy, budget: Budget, opts: AskOptions) -> Plan:
        from edgescale.runtime.memory import memory_model
        from edgescale.strategies.planner import QueryShape, plan

        shape = QueryShape(prompt_tokens=len(tokens), max_new_tokens=opts.max_tokens, strategy=strat,
                           context_cells=self.engine.info.n_ctx_train or None)
        return plan(shape, self.profile(), memory_model(self.engine), budget)

    def ask(
        self,
        prompt: str,
        *,
        strategy: str | Strategy = "single",
        budget: Budget | None = None,
        options: AskOptions | None = None,
        on_step: Callable[[BatchGenerator, Sequence[TokenEvent]], None] | None = None,
        **overrides: Any,
    ) -> Result:
        """Answer one prompt. ``overrides`` are AskOptions fields (max_tokens=..., seed=...)."""
        from edgescale.strategies.auto import run_auto
        from edgescale.strategies.runner import Query, run_query

        t0 = time.perf_counter()
        opts = replace(options or AskOptions(), **overrides)
        strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        tokens = self.prompt_tokens(prompt, opts)
        budget = budget or Budget()
        chosen: Plan | None = None
        if isinstance(strat, Auto) or budget.deadline_s is not None or budget.memory_bytes is not None:
            chosen = self._plan(tokens, strat, budget, opts)
            if not isinstance(strat, Auto):
                strat = parse_strategy(chosen.strategy)
        plan_record = chosen.to_dict() if chosen is not None else {
            "strategy": strat.spec(), "max_new_tokens": opts.max_tokens, "budget": None}
        # planning (and a first-time device measurement) counts against the deadline
        deadline = None if budget.deadline_s is None else budget.deadline_s - (time.perf_counter() - t0)
        config = GenerationConfig(
            max_new_tokens=opts.max_tokens, stop=opts.stop, sampling=opts.sampling_for(strat), seed=opts.seed
        )
        query = Query(
            prompt_tokens=tokens, strategy=strat, config=config, answer_kind=opts.answer, choices=opts.choices,
            deadline_s=deadline, model_name=self.model_name, plan=plan_record,
            step_time=self._profile.step_time if chosen is not None and self._profile is not None else None,
        )
        if isinstance(strat, Auto):
            assert chosen is not None
            first = replace(query, config=replace(config, sampling=opts.sampling_for(Single())))
            return run_auto(self.engine, first, chosen, stage2_sampling=opts.sampling_for(Majority()),
                            on_step=on_step)
        return run_query(self.engine, query, on_step=on_step)
