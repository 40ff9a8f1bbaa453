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

import json
import sys
from collections import deque
from dataclasses import replace
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import backends, decode_utf8, interrupts_deferred, notify, print_json
from edgescale import limits
from edgescale.errors import EdgescaleError, UsageError

if TYPE_CHECKING:
    from edgescale.api import Runtime
    from edgescale.settings import AskSettings
    from edgescale.strategies.result import Result
    from edgescale.strategies.scheduler import Request

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
    try:
        config = SchedulerConfig(max_running=lanes or 1, expect_running=lanes or 1, memory_bytes=parse_size(memory),
                                 prefix_cache=not no_prefix_cache)
        per_query = samples_of(ask_settings(**defaults, names=CLI_NAMES).strategy)
        with Runtime.load(model, backend=backend, threads=threads, n_gpu_layers=gpu_layers,
                          registry=backends(ctx), notify=notify, scheduler=config,
                          width=per_query * (lanes or 8)) as rt:
            if rt.backend_choice is not None:
                notify(f"backend auto: {rt.backend_choice.name} ({rt.backend_choice.reason})")
            if lanes is None:
                lanes = auto_parallel(rt, ask_settings(**defaults, names=CLI_NAMES))
                notify(f"--parallel auto: {lanes} line(s) in flight")
                rt.configure_scheduler(replace(config, max_running=lanes, expect_running=lanes))
            pending: deque[_Line] = deque()
            for n, raw_line in _lines(sys.stdin.buffer, skip):
                pending.append(_submit(rt, n, raw_line, defaults))
                while len(pending) >= lanes or (pending and pending[0].ready()):
                    out.write(pending.popleft())
            while pending:
                out.write(pending.popleft())
    except KeyboardInterrupt:
        for line in pending if "pending" in locals() else ():
            line.cancel()
        done = skip + out.written
        typer.echo(f"interrupted: {out.written} result line(s) written ({done} input line(s) answered in all); "
                   f"resume with --resume OUTPUT_FILE (appending to it with >>), or skip the first {done} "
                   "non-blank input lines", err=True)
        raise typer.Exit(130) from None
    if out.failures:
        typer.echo(f"error: {out.failures} line(s) failed; see their error records", err=True)
        raise typer.Exit(1)


class _Line:
    """One input line on its way: a submitted query, or already an error record."""

    def __init__(self, n: int, item_id: Any, future: Future[Result] | None = None,
                 error: str | None = None, request: Request | None = None) -> None:
        self.n, self.item_id, self.future, self.error, self.request = n, item_id, future, error, request

    def ready(self) -> bool:
        return self.future is None or self.future.done()

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()

    def record(self) -> dict[str, Any]:
        if self.future is not None:
            try:
                result = self.future.result()
            except EdgescaleError as exc:
                self.error = str(exc)
            else:
                return {"id": self.item_id, "ok": True, **result.to_dict()}
        return {"id": self.item_id, "line": self.n, "ok": False, "error": f"line {self.n}: {self.error}"}


class _Writer:
    def __init__(self) -> None:
        self.written = 0
        self.failures = 0

    def write(self, line: _Line) -> None:
        record = line.record()  # waits for the line's query
        with interrupts_deferred():
            print_json(record)
            self.written += 1
        self.failures += not record["ok"]


def _submit(rt: Runtime, n: int, raw: bytes, defaults: dict[str, Any]) -> _Line:
    from edgescale.settings import record_prompt, settings_from_record

    item_id: Any = None
    try:
        item = _parse_line(raw)
        item_id = item.get("id")
        settings = settings_from_record(item, defaults)
        request = rt.request(record_prompt(item), strategy=settings.strategy, budget=settings.budget,
                             options=settings.options)
        return _Line(n, item_id, rt.scheduler.submit(request), request=request)
    except EdgescaleError as exc:
        return _Line(n, item_id, error=str(exc))


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


def _parse_line(raw: bytes) -> dict[str, Any]:
    line = decode_utf8(raw, "the line")
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise UsageError("expected a JSON object")
    return item
