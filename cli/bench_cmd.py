"""`edgescale bench`: strategies side by side on a benchmark, resumable, with tables and plots."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import output_constraint, print_json
from edgescale.errors import UsageError
from edgescale.settings import parse_duration, parse_size

if TYPE_CHECKING:  # pragma: no cover
    from edgescale.evals.bench import BenchProgress, BenchRun
    from edgescale.evals.bench_report import Summary

DEFAULT_STRATEGIES = "single,maj@8,ffs@8,short-3@8,adaptive,early-exit"

DATASET = typer.Option(..., "--dataset", "-d", help="gsm8k, math500, arc-easy, arc-challenge, csqa, boolq, mmlu; "
                       "generated: arith-1d, arith-2d, add-1d, count-objects, arith-3; or the path of a JSONL file of "
                       "{question, answer[, id, kind, choices]}.")
STRATEGIES = typer.Option(DEFAULT_STRATEGIES, "--strategies", "-S",
                          help="Comma-separated strategy specs (see `run --help`), plus baseline@K: K sequential "
                               "llama-cpp-python completions and a majority vote.")
LIMIT = typer.Option(200, "--limit", min=0, help="Questions to run (0 = all).")
OFFSET = typer.Option(0, "--offset", min=0, help="Skip this many questions first.")
PROMPT_STYLE = typer.Option("zero-shot", "--prompt-style", help="zero-shot, few-shot, or bare (the question alone).")
SHOTS = typer.Option(None, "--shots", min=0, help="Few-shot examples per prompt (default: all the dataset has).")
RAW = typer.Option(False, "--raw", help="No chat template (for base models): the prompt ends with 'Answer:' and "
                   "generation also stops at a following 'Question:'.")
OUT = typer.Option(None, "--out", "-o", help="Folder for results.jsonl (resumable), summary.json, table.md and "
                   "PNG plots; rerunning with the same folder skips finished queries.")


def bench(
    dataset: str = DATASET,
    strategies: str = STRATEGIES,
    limit: int = LIMIT,
    offset: int = OFFSET,
    model: str | None = opt.MODEL,
    backend: str = opt.BACKEND,
    threads: int | None = opt.THREADS,
    deadline: str | None = opt.DEADLINE,
    memory: str | None = opt.MEMORY,
    max_tokens: int = opt.MAX_TOKENS,
    seed: int = opt.SEED,
    prompt_style: str = PROMPT_STYLE,
    shots: int | None = SHOTS,
    raw: bool = RAW,
    stop: list[str] = opt.STOP,
    out: Path | None = OUT,
    parallel: int = typer.Option(1, "--parallel", "-P", help="Strategies of one question decoding together in the "
                                 "shared loop (1 = one at a time; records made together are kept apart)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object instead of a table."),
    ray: str | None = opt.RAY,
    actors: int | None = opt.ACTORS,
    threads_per_actor: int = opt.THREADS_PER_ACTOR,
    retries: int = opt.RETRIES,
    policy: str | None = opt.POLICY,
    kv_layout: str = opt.KV_LAYOUT,
    deterministic: bool = opt.DETERMINISTIC,
    kv_type: str = opt.KV_TYPE,
    answer_mode: str = typer.Option("free", "--answer-mode",
                                    help="free, or tail: samples reason freely, then decode their answer under the "
                                         "question kind's grammar (number, choice letter, yes/no)."),
    json_schema: Optional[str] = opt.JSON_SCHEMA,
    regex: Optional[str] = opt.REGEX,
    choices: Optional[str] = opt.CHOICES,
    grammar: Optional[str] = opt.GRAMMAR,
    frequency_penalty: float = opt.FREQUENCY_PENALTY,
    presence_penalty: float = opt.PRESENCE_PENALTY,
    logit_bias: Optional[str] = opt.LOGIT_BIAS,
) -> None:
    """Run strategies on benchmark questions, interleaved per question; report accuracy (95% CI),
    tokens, wall time and memory per strategy, with ratios to maj@k."""
    from edgescale.evals.bench import BenchConfig, load_items, parse_strategies, run_bench
    from edgescale.evals.datasets import PROMPT_STYLES
    from edgescale.settings import CLI_NAMES, sampling_extras

    if not 1 <= parallel <= 64:
        raise UsageError(f"--parallel must be between 1 and 64, got {parallel}")
    if prompt_style not in PROMPT_STYLES:
        raise UsageError(f"bad --prompt-style {prompt_style!r}; choose one of: {', '.join(PROMPT_STYLES)}")
    config = BenchConfig(
        dataset=dataset, strategies=parse_strategies(strategies), limit=limit or None, offset=offset,
        model=model, backend=backend, threads=threads, max_tokens=max_tokens, seed=seed,
        prompt_style=prompt_style, shots=shots, raw=raw, stop=tuple(stop), deadline_s=parse_duration(deadline),
        memory_bytes=parse_size(memory), out=out, parallel=parallel, policy=policy, kv_layout=kv_layout,
        deterministic=deterministic, kv_type=kv_type, answer_mode=answer_mode,
        constraint=output_constraint(json_schema, regex, choices, grammar),
        **sampling_extras(CLI_NAMES, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                          logit_bias=logit_bias),
    )
    config.check()
    if out is not None:
        from edgescale.evals.plots import require_matplotlib

        require_matplotlib()
    items = load_items(config)
    with _Progress(len(items) * len(config.strategies)) as on_progress:
        if ray is not None:
            from edgescale.cli.common import notify
            from edgescale.cluster.connect import ClusterOptions
            from edgescale.cluster.jobs import bench_on_ray

            cluster = ClusterOptions(address=ray, actors=actors, threads_per_actor=threads_per_actor, retries=retries)
            run = bench_on_ray(cluster, config, items, notify, on_progress)
        else:
            run = run_bench(config, on_progress=on_progress, items=items)
    summary = _summary(run)
    if out is not None:
        _write_outputs(out, run, summary)
    if as_json:
        from edgescale.evals.bench_report import summary_dict

        print_json({**summary_dict(summary), **_run_info(run)})
        return
    from rich.console import Console

    from edgescale.evals.bench_report import rich_table

    Console(file=sys.stdout, width=200).print(rich_table(summary))
    typer.echo(f"{run.ran} queries run, {len(items) * len(config.strategies) - run.ran} resumed from --out; "
               f"{run.wall_s:.0f}s", err=True)


def _summary(run: BenchRun) -> Summary:
    from edgescale.evals.bench_report import summarize

    cfg = run.config
    title = (f"{run.model} on {cfg.dataset} (n={len(run.items)}, {cfg.prompt_style}{', raw' if cfg.raw else ''}, "
             f"max_tokens={cfg.max_tokens}, seed={cfg.seed}, threads={','.join(map(str, run.threads)) or '-'})")
    return summarize(title, {s.label: s.spec for s in cfg.strategies}, run.records)


def _run_info(run: BenchRun) -> dict[str, Any]:
    cfg = run.config
    return {
        "dataset": cfg.dataset, "model": run.model, "questions": len(run.items), "offset": cfg.offset,
        "seed": cfg.seed, "settings": run.settings, "threads": list(run.threads), "ran": run.ran,
        "wall_s": run.wall_s,
    }


def _write_outputs(out: Path, run: BenchRun, summary: Summary) -> None:
    from edgescale.evals.bench_report import markdown_table, summary_dict
    from edgescale.evals.plots import plot_tradeoffs

    plots = plot_tradeoffs(summary, out)
    info = {**summary_dict(summary), **_run_info(run), "plots": [
        {"file": p.path.name, "axis": p.axis, "points": [[q.label, q.cost, q.accuracy] for q in p.points],
         "frontier": [q.label for q in p.frontier]} for p in plots]}
    try:
        (out / "summary.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "table.md").write_text(f"**{summary.title}**\n\n{markdown_table(summary)}", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc}") from exc


class _Progress:
    """Progress on stderr with live accuracy per strategy: a rich bar on a terminal,
    else (a log file) one plain line per finished question."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("q{task.fields[question]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[acc]}"), console=self._console, transient=False,
        )
        self._task = self._bar.add_task("bench", total=total, question=0, acc="")
        self._live = self._console.is_terminal
        self._t0 = time.monotonic()

    def __enter__(self) -> Callable[[BenchProgress], None]:
        if self._live:
            self._bar.start()
        return self._update

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._bar.stop()

    def _update(self, p: BenchProgress) -> None:
        acc = "  ".join(f"{t.label} {100 * t.correct / t.done:.0f}%" for t in p.tallies if t.done)
        if self._live:
            self._bar.update(self._task, completed=p.done, question=p.question + 1, acc=acc)
        elif p.done % len(p.tallies) == 0:
            elapsed = time.monotonic() - self._t0
            sys.stderr.write(f"q{p.question + 1} {p.done}/{p.total} queries {elapsed:.0f}s  {acc}\n")
            sys.stderr.flush()
