"""`edgescale batch`: JSONL queries on stdin -> JSONL results on stdout, in order.

Each input line is a JSON object with "prompt" (or "question") and optionally
"id", "strategy", "k", "max_tokens", "temperature", "seed", "answer",
"choices", "stop", "system", "deadline". Command-line options give the
defaults; both go through ``edgescale.settings``. Every input line yields
exactly one output line carrying the input's "id"; a bad line yields
{"id": ..., "line": N, "ok": false, "error": "..."} and the rest go on. The
exit code is 1 if any line failed.

Interrupted (Ctrl-C), the lines written so far are complete and stderr says
how many; ``--resume results.jsonl`` skips as many input lines as that file
holds complete results, so ``edgescale batch --resume out.jsonl < in.jsonl >> out.jsonl``
finishes the job.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.batch_lines import Line, submit_line
from edgescale.cli.common import backends, interrupts_deferred, notify, print_json
from edgescale import limits
from edgescale.errors import UsageError

if TYPE_CHECKING:
    from edgescale.api import Runtime
    from edgescale.settings import AskSettings

RESUME = typer.Option(None, "--resume", help="Output file of an interrupted run: skip the input lines it "
                                             "already answers (append the new results to it with >>).")
PARALLEL = typer.Option("1", "--parallel", "-P",
                        help="Lines in flight at once through the shared decode loop: N, or auto (from the device "
                             "profile and --memory). Output stays in input order.")
MAX_PARALLEL = 64


def batch(
    ctx: typer.Context,
    model: Optional[str] = opt.MODEL,
    backend: str = opt.BACKEND,
    strategy: Optional[str] = opt.STRATEGY,
    samples: Optional[int] = opt.SAMPLES,
    temperature: Optional[float] = opt.TEMPERATURE,
    top_k: int = opt.TOP_K,
    top_p: float = opt.TOP_P,
    min_p: float = opt.MIN_P,
    max_tokens: int = opt.MAX_TOKENS,
    seed: int = opt.SEED,
    threads: Optional[int] = opt.THREADS,
    gpu_layers: Optional[int] = opt.GPU_LAYERS,
    answer: str = opt.ANSWER,
    system: Optional[str] = opt.SYSTEM,
    raw: bool = opt.RAW,
    deadline: Optional[str] = opt.DEADLINE,
    memory: Optional[str] = opt.MEMORY,
    resume: Optional[Path] = RESUME,
    parallel: str = PARALLEL,
    no_prefix_cache: bool = opt.NO_PREFIX_CACHE,
    ray: Optional[str] = opt.RAY,
    actors: Optional[int] = opt.ACTORS,
    threads_per_actor: int = opt.THREADS_PER_ACTOR,
    retries: int = opt.RETRIES,
    policy: Optional[str] = opt.POLICY,
) -> None:
    """Answer JSONL queries from stdin, one JSON result per line on stdout, in input order."""
    from edgescale.api import Runtime
    from edgescale.settings import CLI_NAMES, ask_settings, parse_size
    from edgescale.strategies.scheduler import SchedulerConfig
    from edgescale.strategies.spec import samples_of

    defaults: dict[str, Any] = dict(
        strategy=strategy, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        max_tokens=max_tokens, seed=seed, answer=answer, stop=(), system=system, raw=raw, deadline=deadline,
        memory=memory,
    )
    ask_settings(**defaults, names=CLI_NAMES)  # bad defaults fail before the model loads
    skip = answered_lines(resume) if resume is not None else 0
    lanes = parse_parallel(parallel)
    out = _Writer()
    pending: deque[Line] = deque()
    try:
        if ray is not None:
            _batch_on_ray(ray, actors, threads_per_actor, retries, defaults, skip, lanes, out,
                          model=model, backend=backend, gpu_layers=gpu_layers, memory=parse_size(memory),
                          prefix_cache=not no_prefix_cache, policy=policy)
        else:
            config = SchedulerConfig(max_running=lanes or 1, expect_running=lanes or 1,
                                     memory_bytes=parse_size(memory), prefix_cache=not no_prefix_cache)
            per_query = samples_of(ask_settings(**defaults, names=CLI_NAMES).strategy)
            with Runtime.load(model, backend=backend, threads=threads, n_gpu_layers=gpu_layers,
                              registry=backends(ctx), notify=notify, scheduler=config,
                              width=per_query * (lanes or 8)) as rt:
                rt.use_policy(policy)
                if rt.backend_choice is not None:
                    notify(f"backend auto: {rt.backend_choice.name} ({rt.backend_choice.reason})")
                if lanes is None:
                    lanes = auto_parallel(rt, ask_settings(**defaults, names=CLI_NAMES))
                    notify(f"--parallel auto: {lanes} line(s) in flight")
                    rt.configure_scheduler(replace(config, max_running=lanes, expect_running=lanes))
                for n, raw_line in _lines(sys.stdin.buffer, skip):
                    pending.append(submit_line(rt, n, raw_line, defaults))
                    while len(pending) >= lanes or (pending and pending[0].ready()):
                        out.write(pending.popleft())
                while pending:
                    out.write(pending.popleft())
    except KeyboardInterrupt:
        for line in pending:
            line.cancel()
        done = skip + out.written
        typer.echo(f"interrupted: {out.written} result line(s) written ({done} input line(s) answered in all); "
                   f"resume with --resume OUTPUT_FILE (appending to it with >>), or skip the first {done} "
                   "non-blank input lines", err=True)
        raise typer.Exit(130) from None
    if out.failures:
        typer.echo(f"error: {out.failures} line(s) failed; see their error records", err=True)
        raise typer.Exit(1)


def _batch_on_ray(address: str, actors: int | None, threads: int, retries: int, defaults: dict[str, Any], skip: int,
                  lanes: int | None, out: _Writer, *, model: str | None, backend: str, gpu_layers: int | None,
                  memory: int | None, prefix_cache: bool, policy: str | None) -> None:
    from edgescale.cluster.connect import ClusterOptions
    from edgescale.cluster.jobs import batch_on_ray
    from edgescale.cluster.workers import WorkerSpec
    from edgescale.settings import CLI_NAMES, ask_settings
    from edgescale.strategies.spec import samples_of

    options = ClusterOptions(address=address, actors=actors, threads_per_actor=threads, retries=retries)
    per_query = samples_of(ask_settings(**defaults, names=CLI_NAMES).strategy)
    spec = WorkerSpec(model, backend=backend, threads=threads, gpu_layers=gpu_layers, lanes=lanes or 0,
                      memory_bytes=memory, prefix_cache=prefix_cache, width=per_query * (lanes or 8),
                      policy=policy)
    batch_on_ray(options, spec, defaults, _lines(sys.stdin.buffer, skip), out.emit, notify)


class _Writer:
    """Result lines on the stdout the command started with (a Ray session sends Ray's own
    messages, which it prints on stdout, to stderr meanwhile)."""

    def __init__(self) -> None:
        self.stream = sys.stdout
        self.written = 0
        self.failures = 0

    def write(self, line: Line) -> None:
        self.emit(line.record())  # waits for the line's query

    def emit(self, record: dict[str, Any]) -> None:
        with interrupts_deferred():
            print_json(record, self.stream)
            self.written += 1
        self.failures += not record["ok"]


def parse_parallel(text: str) -> int | None:
    """``--parallel``: a count from 1 to the queue's limit, or ``auto`` (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--parallel must be a number or auto, got {text!r}") from None
    if not 1 <= n <= MAX_PARALLEL:
        raise UsageError(f"--parallel must be between 1 and {MAX_PARALLEL}, got {n}")
    return n


def auto_parallel(rt: Runtime, settings: AskSettings) -> int:
    """Lines in flight for ``--parallel auto``: enough queries that the batch reaches the width
    with the best throughput in the device profile, as many as the memory budget allows."""
    from edgescale.strategies.planner import best_wave
    from edgescale.strategies.spec import samples_of

    from edgescale.runtime.memory import memory_model
    from edgescale.strategies.scheduler import cells_in_budget

    per_query = max(1, samples_of(settings.strategy))
    lanes = max(1, best_wave(rt.profile(), limits.MAX_SAMPLES) // per_query)
    if settings.budget.memory_bytes is not None:
        one = rt.plan("What is the answer?", strategy=settings.strategy, budget=settings.budget,
                      options=settings.options)
        room = cells_in_budget(memory_model(rt.engine), settings.budget.memory_bytes, n_ids=lanes * per_query,
                               max_batch=256)
        lanes = max(1, min(lanes, room // max(1, one.n_cells)))
    return min(lanes, MAX_PARALLEL)


def answered_lines(path: Path) -> int:
    """Complete result lines in an earlier run's output (a cut-off last line does not count)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --resume file {path}: {exc.strerror}") from None
    complete = data.split(b"\n")[:-1]  # whatever follows the last newline was cut off
    return sum(1 for line in complete if line.strip())


def _lines(stream: BinaryIO, skip: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the non-blank input lines after the first ``skip`` of them."""
    seen = 0
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        seen += 1
        if seen > skip:
            yield n, line
