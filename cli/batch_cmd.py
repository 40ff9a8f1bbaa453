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
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import backends, decode_utf8, interrupts_deferred, notify, print_json
from edgescale.errors import EdgescaleError, UsageError

RESUME = typer.Option(None, "--resume", help="Output file of an interrupted run: skip the input lines it "
                                             "already answers (append the new results to it with >>).")


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
) -> None:
    """Answer JSONL queries from stdin, one JSON result per line on stdout, in input order."""
    from edgescale.api import Runtime
    from edgescale.settings import CLI_NAMES, ask_settings, record_prompt, settings_from_record

    defaults: dict[str, Any] = dict(
        strategy=strategy, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        max_tokens=max_tokens, seed=seed, answer=answer, stop=(), system=system, raw=raw, deadline=deadline,
        memory=memory,
    )
    ask_settings(**defaults, names=CLI_NAMES)  # bad defaults fail before the model loads
    skip = answered_lines(resume) if resume is not None else 0
    failures = written = 0
    try:
        with Runtime.load(model, backend=backend, threads=threads, n_gpu_layers=gpu_layers,
                          registry=backends(ctx), notify=notify) as rt:
            for n, raw_line in _lines(sys.stdin.buffer, skip):
                record: dict[str, Any]
                item_id: Any = None
                try:
                    item = _parse_line(raw_line)
                    item_id = item.get("id")
                    settings = settings_from_record(item, defaults)
                    result = rt.ask(record_prompt(item), strategy=settings.strategy, budget=settings.budget,
                                    options=settings.options)
                    record = {"id": item_id, "ok": True, **result.to_dict()}
                except EdgescaleError as exc:
                    failures += 1
                    record = {"id": item_id, "line": n, "ok": False, "error": f"line {n}: {exc}"}
                with interrupts_deferred():
                    print_json(record)
                    written += 1
    except KeyboardInterrupt:
        done = skip + written
        typer.echo(f"interrupted: {written} result line(s) written ({done} input line(s) answered in all); "
                   f"resume with --resume OUTPUT_FILE (appending to it with >>), or skip the first {done} "
                   "non-blank input lines", err=True)
        raise typer.Exit(130) from None
    if failures:
        typer.echo(f"error: {failures} line(s) failed; see their error records", err=True)
        raise typer.Exit(1)


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
