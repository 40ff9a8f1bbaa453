"""Options shared by `run`, `batch`, `plan` and `bench`, and their conversion to API objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import typer

from edgescale.api import AskOptions, Budget
from edgescale.cli.common import check_answer_kind, parse_duration, parse_size
from edgescale.errors import UsageError
from edgescale.strategies.spec import Auto, Majority, Single, Strategy, parse_strategy

MODEL = typer.Option(None, "--model", "-m", envvar="EDGESCALE_MODEL",
                     help="Catalog name (see `edgescale models`) or path to a .gguf file / ONNX directory.")
BACKEND = typer.Option("llama.cpp", "--backend", envvar="EDGESCALE_BACKEND", help="llama.cpp or onnx.")
STRATEGY = typer.Option(None, "--strategy", "-s", envvar="EDGESCALE_STRATEGY",
                        help="single, maj@K, ffs@K, short-M@K, best@K, adaptive[:...], early-exit[:...].")
SAMPLES = typer.Option(None, "--samples", "-k", min=1, max=64,
                       help="Samples per query (alone: majority@k; with a strategy: its k if the spec has none).")
TEMPERATURE = typer.Option(None, "--temperature", "-t", min=0.0, max=5.0,
                           help="Sampling temperature (default: 0 for single, 0.8 otherwise).")
TOP_K = typer.Option(40, "--top-k", min=0, help="Top-k filter (0 = off).")
TOP_P = typer.Option(0.95, "--top-p", min=0.0, max=1.0, help="Nucleus filter.")
MIN_P = typer.Option(0.05, "--min-p", min=0.0, max=1.0, help="Min-p filter.")
MAX_TOKENS = typer.Option(256, "--max-tokens", "-n", min=1, max=32768, help="New tokens per sample at most.")
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Base seed; sample i uses seed + i.")
THREADS = typer.Option(None, "--threads", min=1, max=1024, envvar="EDGESCALE_THREADS",
                       help="CPU threads (default: the cores free right now).")
GPU_LAYERS = typer.Option(None, "--gpu-layers", min=0, max=10000,
                          help="Layers to offload to the GPU (default: as many as fit; 0 on CPU-only builds).")
ANSWER = typer.Option("auto", "--answer", help="Answer kind to extract and vote on: auto|number|choice|yesno|text.")
STOP = typer.Option([], "--stop", help="Stop string (repeatable).")
SYSTEM = typer.Option(None, "--system", help="System message.")
RAW = typer.Option(False, "--raw", help="Send the prompt as is, without the model's chat template.")
DEADLINE = typer.Option(None, "--deadline", help="Latency budget per query, e.g. 2s or 500ms.")
MEMORY = typer.Option(None, "--memory", help="Memory budget, e.g. 512MB or 1GB.")
JSON = typer.Option(False, "--json", help="Print one JSON result object.")


@dataclass(frozen=True)
class AskSettings:
    strategy: Strategy
    budget: Budget
    options: AskOptions

    @property
    def streams(self) -> bool:
        return isinstance(self.strategy, Single)


def resolve_strategy(spec: Optional[str], samples: Optional[int], *, budgeted: bool = False) -> Strategy:
    """No spec: -k alone means maj@k; a budget alone means auto; nothing means single."""
    if spec is None or not spec.strip():
        if samples is not None and samples > 1:
            return Majority(samples)
        return Auto() if budgeted and samples is None else Single()
    return parse_strategy(spec, default_k=samples or 8)


def ask_settings(
    *,
    strategy: Optional[str],
    samples: Optional[int],
    temperature: Optional[float],
    top_k: int,
    top_p: float,
    min_p: float,
    max_tokens: int,
    seed: int,
    answer: str,
    stop: Sequence[str],
    system: Optional[str],
    raw: bool,
    deadline: Optional[str],
    memory: Optional[str],
    choices: Sequence[str] = (),
) -> AskSettings:
    """Validate CLI / batch-line values and build the API objects."""
    if top_p <= 0.0:
        raise UsageError("--top-p must be greater than 0")
    options = AskOptions(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
        stop=tuple(stop), system=system, chat=not raw, answer=check_answer_kind(answer), choices=tuple(choices),
    )
    budget = Budget(deadline_s=parse_duration(deadline), memory_bytes=parse_size(memory))
    budgeted = budget.deadline_s is not None or budget.memory_bytes is not None
    return AskSettings(resolve_strategy(strategy, samples, budgeted=budgeted), budget, options)
