"""`edgescale serve`: an OpenAI-compatible HTTP server on the shared decode loop.

The model loads once (``/health`` says ``loading`` until then); every request
runs through the runtime's scheduler with the strategy, deadline and answer
kind it names, or the defaults given here. See ``edgescale.serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import backends, notify
from edgescale.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    from edgescale.api import Runtime

HOST = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback only unless you say otherwise).")
PORT = typer.Option(8080, "--port", "-p", help="Port to listen on (0: any free port; stderr says which).")
API_KEY = typer.Option(None, "--api-key", envvar="EDGESCALE_API_KEY",
                       help="Require 'Authorization: Bearer KEY' on every request.")
PARALLEL = typer.Option("auto", "--parallel", "-P",
                        help="Queries decoding at once in the shared loop: N, or auto (from the device profile "
                             "and --memory).")
MEMORY = typer.Option(None, "--memory", help="Memory budget of the whole server (model, KV, buffers), e.g. 1GB: "
                                             "sizes the shared KV cache once (default: room for --parallel "
                                             "requests of --max-tokens + 512 tokens).")
DEADLINE_MS = typer.Option(None, "--deadline-ms", help="Default deadline of a request, in ms from its arrival.")
MAX_QUEUE = typer.Option(64, "--max-queue", help="Requests waiting at most; more get 429 with Retry-After.")
MAX_N = typer.Option(16, "--max-n", help="Largest 'n' a request may ask for.")
MAX_SAMPLES = typer.Option(16, "--max-samples",
                           help="Most samples one request may draw, by 'n' or by a strategy's k (maj@64 is refused "
                                "with 400 above it).")
MAX_PROMPT = typer.Option(8192, "--max-prompt-tokens", help="Longest prompt a request may send, in tokens.")
MAX_TOKENS_LIMIT = typer.Option(4096, "--max-tokens-limit", help="Largest 'max_tokens' a request may ask for.")
MAX_BODY = typer.Option("1MB", "--max-body", help="Largest request body.")
PREFILL_CHUNK = typer.Option(64, "--prefill-chunk",
                             help="Prompt tokens a reading query adds to each shared step while some query has a "
                                  "deadline.")
BULK_PREFILL_CHUNK = typer.Option(256, "--bulk-prefill-chunk",
                                  help="The same while no query has a deadline (fewer, fuller steps read prompts "
                                       "faster; docs/BENCHMARKS.md).")
QUEUE_ORDER = typer.Option("fifo", "--queue-order", help="Queue order: fifo, or edf (earliest deadline first).")
TYPICAL_PROMPT = 512  # tokens: what the shared context is first sized for, per request
COMPUTE_NICE = typer.Option(0, "--compute-nice", min=0, max=19,
                            help="Nice value of the decode threads (Linux): above 0 the HTTP event loop keeps its "
                                 "core on a small box (docs/BENCHMARKS.md measures 0 against 10).")
MAX_CONNECTIONS = typer.Option(256, "--max-connections",
                               help="Open connections at most (uvicorn's limit_concurrency); more get 503.")
READ_TIMEOUT = typer.Option("30s", "--read-timeout",
                            help="A request's line and headers must arrive within this after its connection opens "
                                 "(or its previous response ends), and then its body within this (408).")
REASONING_EFFORT = typer.Option([], "--reasoning-effort", metavar="LEVEL=STRATEGY",
                                help="What a request's reasoning_effort runs (repeatable; LEVEL low, medium or high; "
                                     "default low=single, medium=auto, high=conf@16:online=1,temp=0.4, k at most "
                                     "--max-samples).")
GRACE = typer.Option("10s", "--grace", help="On SIGTERM: how long in-flight requests may take to finish.")


def serve(
    ctx: typer.Context,
    model: Optional[str] = opt.MODEL,
    backend: str = opt.BACKEND,
    threads: Optional[int] = opt.THREADS,
    gpu_layers: Optional[int] = opt.GPU_LAYERS,
    host: str = HOST,
    port: int = PORT,
    api_key: Optional[str] = API_KEY,
    memory: Optional[str] = MEMORY,
    parallel: str = PARALLEL,
    strategy: Optional[str] = opt.STRATEGY,
    deadline_ms: Optional[int] = DEADLINE_MS,
    answer: str = opt.ANSWER,
    seed: int = opt.SEED,
    max_tokens: int = opt.MAX_TOKENS,
    max_queue: int = MAX_QUEUE,
    max_n: int = MAX_N,
    max_samples: int = MAX_SAMPLES,
    max_prompt_tokens: int = MAX_PROMPT,
    max_tokens_limit: int = MAX_TOKENS_LIMIT,
    max_body: str = MAX_BODY,
    prefill_chunk: int = PREFILL_CHUNK,
    bulk_prefill_chunk: int = BULK_PREFILL_CHUNK,
    no_prefix_cache: bool = opt.NO_PREFIX_CACHE,
    queue_order: str = QUEUE_ORDER,
    policy: Optional[str] = opt.POLICY,
    grace: str = GRACE,
    max_connections: int = MAX_CONNECTIONS,
    read_timeout: str = READ_TIMEOUT,
    kv_layout: str = opt.KV_LAYOUT,
    deterministic: bool = opt.DETERMINISTIC,
    kv_type: str = opt.KV_TYPE,
    compute_nice: int = COMPUTE_NICE,
    reasoning_effort: list[str] = REASONING_EFFORT,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (chat, completions, SSE streaming)."""
    from edgescale.api import RuntimeSpec
    from edgescale.scheduler.config import SchedulerConfig
    from edgescale.serve.fields import parse_efforts
    from edgescale.serve.protocol import Limits, defaults_of
    from edgescale.serve.state import ServeConfig
    from edgescale.settings import parse_duration, parse_lanes, parse_size
    from edgescale.strategies.spec import parse_strategy, samples_of

    _need_serve_extra()
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    for name, value, hi in (("--max-n", max_n, 64), ("--max-samples", max_samples, 64),
                            ("--max-queue", max_queue, 1 << 16), ("--max-connections", max_connections, 1 << 16),
                            ("--max-prompt-tokens", max_prompt_tokens, 1 << 24),
                            ("--max-tokens-limit", max_tokens_limit, 32768)):
        if not 1 <= value <= hi:
            raise UsageError(f"{name} must be between 1 and {hi}, got {value}")
    # the defaults go through the same validation as every request (--deadline-ms is read there)
    efforts = parse_efforts(reasoning_effort, max_samples)
    defaults, settings = defaults_of(strategy=strategy, deadline_ms=deadline_ms, answer=answer, seed=seed,
                                     max_tokens=max_tokens, efforts=efforts)
    lanes = parse_lanes(parallel)
    body_limit = parse_size(max_body)
    assert body_limit is not None
    limits = Limits(max_body_bytes=body_limit, max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens_limit,
                    max_n=max_n, max_samples=max_samples)
    refusal = limits.samples_refusal(samples_of(settings.strategy), f"--strategy {settings.strategy.spec()}",
                                     "strategy")
    if refusal is not None:
        raise UsageError(refusal.message)
    for level, spec_text in efforts:  # what a level runs stays within the limits too
        refusal = limits.samples_refusal(samples_of(parse_strategy(spec_text)),
                                         f"--reasoning-effort {level}={spec_text}", "reasoning_effort")
        if refusal is not None:
            raise UsageError(refusal.message)
    read_timeout_s = parse_duration(read_timeout)
    if read_timeout_s is None or read_timeout_s <= 0:
        raise UsageError(f"--read-timeout must be a positive duration, got {read_timeout!r}")
    config = ServeConfig(
        host=host, port=port, api_key=api_key.strip() if api_key else None, grace_s=parse_duration(grace) or 0.0,
        defaults=defaults, limits=limits, max_connections=max_connections, read_timeout_s=read_timeout_s,
    )
    # a server's requests come one by one: the shared context is sized up front for as many
    # as run at once, each of the default length (not for the first one)
    spec = RuntimeSpec(
        model, backend=backend, threads=threads, gpu_layers=gpu_layers, lanes=lanes, policy=policy,
        scheduler=SchedulerConfig(memory_bytes=parse_size(memory), max_queue=max_queue,
                                  policy=queue_order.strip().lower(), prefix_cache=not no_prefix_cache,
                                  prefill_chunk=prefill_chunk, bulk_prefill_chunk=bulk_prefill_chunk,
                                  compute_nice=compute_nice),
        reserve_tokens=max_tokens + TYPICAL_PROMPT, width=8 * (lanes if isinstance(lanes, int) else 1),
        kv_layout=kv_layout, deterministic=deterministic, kv_type=kv_type,
    )
    registry = backends(ctx)
    path = registry.get(backend).resolve(model)  # a missing model fails now, before the port opens
    model_id = model if model and not Path(model).exists() else _model_id(path, model)

    def load() -> tuple[Runtime, str]:
        from edgescale.api import Runtime
        from edgescale.runtime.memory import memory_model

        rt = Runtime.open(spec, settings, registry=registry, notify=notify)
        sched = rt.scheduler_config
        n = sched.max_running
        chosen = f", backend auto: {rt.backend_choice.reason}" if rt.backend_choice is not None else ""
        per_cell = memory_model(rt.engine, sched.kv_layout, sched.kv_type).kv_bytes_per_cell
        kv = (f"memory budget {memory}" if memory else
              f"KV cache for {sched.min_cells} tokens "
              f"({sched.min_cells * per_cell / 2**20:.0f} MB; --memory sets a budget)")
        if rt.kv_choice is not None:
            kv += f", KV type {rt.kv_choice.kv_type.name} ({rt.kv_choice.reason})"
        return rt, (f"{model_id} on {rt.engine.backend_name} ({rt.engine.n_threads} threads), up to {n} "
                    f"quer{'y' if n == 1 else 'ies'} at once, {kv}{chosen}")

    from edgescale.serve.run import serve as run_server

    code = run_server(config, model_id, load, notify)
    if code:
        raise typer.Exit(code)


def _model_id(path: Path, ref: str | None) -> str:
    """What /v1/models calls the model: the default's catalog name, a pulled model's store name,
    else its file (or folder) name."""
    from edgescale.models.catalog import DEFAULT_MODEL
    from edgescale.models.store import find_pulled

    if ref is None:
        return DEFAULT_MODEL
    pulled = find_pulled(ref)
    if pulled is not None:
        return pulled.name
    return path.stem if path.is_file() else path.name


def _need_serve_extra() -> None:
    missing = []
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BackendUnavailable(f"`edgescale serve` needs {', '.join(missing)}: pip install 'edgescale[serve]'")
