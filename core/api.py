"""The Python API: ``Runtime.load(model)`` then ``runtime.ask(prompt, strategy=..., budget=...)``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from edgescale.errors import EmptyPrompt, UsageError
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationConfig, TokenEvent
from edgescale.runtime.sampling import SamplingConfig
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Single, Strategy, parse_strategy

DEFAULT_TEMPERATURE = 0.8  # for strategies that draw several samples
BACKENDS = ("llama.cpp", "onnx")


def draws_one_sample(strategy: Strategy) -> bool:
    return isinstance(strategy, Single) or getattr(strategy, "k", 0) == 1


@dataclass(frozen=True)
class Budget:
    """What one query may spend: wall time and memory (None = no limit)."""

    deadline_s: float | None = None
    memory_bytes: int | None = None


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


def load_engine(
    model: str | Path | None = None,
    *,
    backend: str = "llama.cpp",
    threads: int | None = None,
    n_gpu_layers: int = 0,
) -> Engine:
    """Resolve a model name or path and load it on the chosen backend."""
    from edgescale.devices.cpu import default_threads

    n_threads = threads if threads is not None else default_threads()
    if backend in ("llama.cpp", "llama_cpp", "llamacpp"):
        from edgescale.models.catalog import resolve_model
        from edgescale.runtime.llama_engine import LlamaCppEngine

        return LlamaCppEngine.load(resolve_model(model), n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    if backend in ("onnx", "onnxruntime"):
        from edgescale.runtime.onnx_engine import OnnxEngine

        if model is None:
            raise UsageError("the onnx backend needs a model directory (made by `edgescale convert`)")
        return OnnxEngine.load(Path(model), n_threads=n_threads)
    raise UsageError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


class Runtime:
    """A loaded model plus the strategy layer."""

    def __init__(self, engine: Engine, model_name: str = "") -> None:
        self.engine = engine
        self.model_name = model_name or engine.info.name

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        backend: str = "llama.cpp",
        threads: int | None = None,
        n_gpu_layers: int = 0,
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
        from edgescale.strategies.runner import Query, run_query

        opts = replace(options or AskOptions(), **overrides)
        strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        tokens = self.prompt_tokens(prompt, opts)
        budget = budget or Budget()
        config = GenerationConfig(
            max_new_tokens=opts.max_tokens, stop=opts.stop, sampling=opts.sampling_for(strat), seed=opts.seed
        )
        query = Query(
            prompt_tokens=tokens, strategy=strat, config=config, answer_kind=opts.answer, choices=opts.choices,
            deadline_s=budget.deadline_s, model_name=self.model_name,
        )
        return run_query(self.engine, query, on_step=on_step)
