"""`edgescale tune`: fit auto's policy for this model and a task; save it next to the device profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.bench_cmd import DATASET, PROMPT_STYLE, RAW, SHOTS, _Progress
from edgescale.cli.common import print_json
from edgescale.errors import UsageError
from edgescale.settings import parse_duration, parse_size

TASK = typer.Option(..., "--task", help="Name to save the policy under (use it with --policy NAME).")
CANDIDATES = typer.Option("adaptive:max=8,conf@8:online=1,temp=0.4", "--candidates",
                          help="What auto may escalate to: comma-separated adaptive or conf@K specs (each may "
                               "set temp=), each run on every question.")
# 200: the held-out accuracy of a fit on n questions has a binomial standard error of about
# 0.5/sqrt(n): 5 points at 100 (the fold-to-fold spread measured on arith-1d, 50 to 60% over folds
# of 20, agrees), 3.5 at 200; a fit on 100 could not tell 59% from 49% (issue 15's fit and report)
LIMIT = typer.Option(200, "--limit", min=1, help="Questions to fit on (200: a held-out standard error of "
                                                   "about 3.5 points; 100 gives 5).")
OFFSET = typer.Option(0, "--offset", min=0, help="Skip this many questions first (keep the questions you "
                      "report on out of the fit).")
MIN_GAIN = typer.Option(2, "--min-gain", min=0, help="Questions escalating must win over stage 1 alone; "
                        "otherwise the policy never escalates.")


def tune(
    dataset: str = DATASET,
    task: str = TASK,
    candidates: str = CANDIDATES,
    limit: int = LIMIT,
    offset: int = OFFSET,
    model: Optional[str] = opt.MODEL,
    backend: str = opt.BACKEND,
    threads: Optional[int] = opt.THREADS,
    deadline: Optional[str] = opt.DEADLINE,
    memory: Optional[str] = opt.MEMORY,
    max_tokens: int = opt.MAX_TOKENS,
    seed: int = opt.SEED,
    prompt_style: str = PROMPT_STYLE,
    shots: Optional[int] = SHOTS,
    raw: bool = RAW,
    stop: list[str] = opt.STOP,
    min_gain: int = MIN_GAIN,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the runs' records (resumable; "
                                       "default: edgescale's cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fitted policy as one JSON object."),
    kv_type: str = opt.KV_TYPE,
) -> None:
    """Run auto's stage 1 and the candidate escalations on labelled questions, fit when auto
    escalates and to what, and save it as the policy TASK for this model."""
    from edgescale.evals.bench import BenchConfig, model_key, parse_strategies
    from edgescale.evals.datasets import PROMPT_STYLES
    from edgescale.evals.tune import tune as fit
    from edgescale.models.catalog import cache_dir
    from edgescale.strategies.policy import save_policy
    from edgescale.strategies.spec import check_name

    check_name(task)
    if prompt_style not in PROMPT_STYLES:
        raise UsageError(f"bad --prompt-style {prompt_style!r}; choose one of: {', '.join(PROMPT_STYLES)}")
    folder = out if out is not None else cache_dir() / "tune" / model_key(model, backend) / task
    config = BenchConfig(
        dataset=dataset, strategies=(), limit=limit, offset=offset, model=model, backend=backend, threads=threads,
        max_tokens=max_tokens, seed=seed, prompt_style=prompt_style, shots=shots, raw=raw, stop=tuple(stop),
        deadline_s=parse_duration(deadline), memory_bytes=parse_size(memory), out=folder, kv_type=kv_type,
    )
    n_candidates = len(parse_strategies(candidates))
    with _Progress(limit * (1 + n_candidates)) as on_progress:
        result = fit(config, task, [candidates], min_gain=min_gain, on_progress=on_progress)
    path = save_policy(result.policy)
    if as_json:
        print_json({**result.policy.to_dict(), "path": str(path), "id": result.policy.id()})
        return
    _report(result, path)


def _report(result: Any, path: Path) -> None:
    fit, pol = result.fit, result.policy
    n = fit.n

    def line(name: str, o: Any) -> str:
        return (f"  {name:<34} {100 * o.accuracy(n):5.1f}%  {o.tokens:7.1f} tokens/question  "
                f"escalates {o.escalated}/{n}")

    typer.echo(f"fitted on {n} questions of {result.stage1.config.dataset} (offset {result.stage1.config.offset})")
    typer.echo(line("stage 1 alone", fit.stage1))
    for label in sorted({o.escalation for o in fit.options if o.escalation}):
        top = max((o for o in fit.options if o.escalation == label), key=lambda o: (o.correct, -o.tokens))
        typer.echo(line(f"{label} @ certainty < {min(1.0, top.threshold):.3f}", top))
    typer.echo(line("chosen", fit.chosen))
    for h in result.held_out:
        spread = ", ".join(f"{100 * a:.0f}" for a in h.fold_accuracy)
        typer.echo(f"  held out ({h.folds}-fold CV), {h.candidate:<22} {100 * h.accuracy:5.1f}%  {h.tokens:7.1f} "
                   f"tokens/question ({h.tokens / max(fit.stage1.tokens, 1e-9):.1f}x stage 1; folds: {spread}%)")
    if result.held_out:
        h = result.held_out[0]
        typer.echo(f"expected on new questions (cross-validated): {100 * h.accuracy:.1f}% at {h.tokens:.1f} "
                   f"tokens/question; check it with `edgescale bench --policy {pol.task}` on a report split")
    typer.echo(f"{pol.describe()}\nsaved to {path}; use it with --policy {pol.task}")
