"""`edgescale batch`: JSONL queries on stdin -> JSONL results on stdout, in order.

Each input line is a JSON object with "prompt" (or "question") and optionally
"id", "strategy", "k", "max_tokens", "temperature", "seed", "answer",
"choices", "stop", "system", "deadline", "response_format", "frequency_penalty",
"presence_penalty", "logit_bias". Command-line options give the
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
from typing import Any, Optional

import typer

from edgescale.batch import Line, answered_lines, input_lines, submit_line
from edgescale.cli import options as opt
from edgescale.cli.common import backends, interrupts_deferred, notify, output_constraint, print_json

BULK_PREFILL_CHUNK = 256  # prompt tokens a step reads per query while no line has a deadline (docs/BENCHMARKS.md)
RESUME = typer.Option(None, "--resume", help="Output file of an interrupted run: skip the input lines it "
                                             "already answers (append the new results to it with >>).")
PARALLEL = typer.Option("1", "--parallel", "-P",
                        help="Lines in flight at once through the shared decode loop: N, or auto (from the device "
                             "profile and --memory). Output stays in input order.")


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
    frequency_penalty: float = opt.FREQUENCY_PENALTY,
    presence_penalty: float = opt.PRESENCE_PENALTY,
    logit_bias: Optional[str] = opt.LOGIT_BIAS,
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
    kv_layout: str = opt.KV_LAYOUT,
    deterministic: bool = opt.DETERMINISTIC,
    kv_type: str = opt.KV_TYPE,
    json_schema: Optional[str] = opt.JSON_SCHEMA,
    regex: Optional[str] = opt.REGEX,
    choices: Optional[str] = opt.CHOICES,
    grammar: Optional[str] = opt.GRAMMAR,
) -> None:
    """Answer JSONL queries from stdin, one JSON result per line on stdout, in input order."""
    from edgescale.api import Runtime, RuntimeSpec
    from edgescale.scheduler.config import SchedulerConfig
    from edgescale.settings import CLI_NAMES, ask_settings, parse_lanes, parse_size

    defaults: dict[str, Any] = dict(
        strategy=strategy, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        max_tokens=max_tokens, seed=seed, answer=answer, stop=(), system=system, raw=raw, deadline=deadline,
        memory=memory, response_format=output_constraint(json_schema, regex, choices, grammar),
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, logit_bias=logit_bias,
    )
    settings = ask_settings(**defaults, names=CLI_NAMES)  # bad defaults fail before the model loads
    skip = answered_lines(resume) if resume is not None else 0
    lanes = parse_lanes(parallel)
    spec = RuntimeSpec(model, backend=backend, threads=threads, gpu_layers=gpu_layers, lanes=lanes,
                       scheduler=SchedulerConfig(memory_bytes=parse_size(memory), prefix_cache=not no_prefix_cache,
                                                 bulk_prefill_chunk=BULK_PREFILL_CHUNK),
                       policy=policy, kv_layout=kv_layout, deterministic=deterministic,
                       kv_type=kv_type)
    out = _Writer()
    pending: deque[Line] = deque()
    try:
        if ray is not None:
            from edgescale.cluster.connect import ClusterOptions
            from edgescale.cluster.jobs import batch_on_ray

            options = ClusterOptions(address=ray, actors=actors, threads_per_actor=threads_per_actor,
                                     retries=retries)
            batch_on_ray(options, replace(spec, threads=threads_per_actor), defaults,
                         input_lines(sys.stdin.buffer, skip), out.emit, notify)
        else:
            with Runtime.open(spec, settings, registry=backends(ctx), notify=notify) as rt:
                if rt.backend_choice is not None:
                    notify(f"backend auto: {rt.backend_choice.name} ({rt.backend_choice.reason})")
                in_flight = rt.scheduler_config.max_running
                if lanes == "auto":
                    notify(f"--parallel auto: {in_flight} line(s) in flight")
                for n, raw_line in input_lines(sys.stdin.buffer, skip):
                    pending.append(submit_line(rt, n, raw_line, defaults))
                    while len(pending) >= in_flight or (pending and pending[0].ready()):
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
