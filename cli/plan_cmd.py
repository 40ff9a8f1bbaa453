"""`edgescale plan`: the plan a query would run, with predicted time and memory, without running it."""

from __future__ import annotations

from typing import Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import print_json, read_stdin_prompt


def plan(
    prompt: Optional[str] = typer.Argument(None, help="The prompt; read from stdin when omitted."),
    model: Optional[str] = opt.MODEL,
    backend: str = opt.BACKEND,
    strategy: Optional[str] = typer.Option("auto", "--strategy", "-s", help="auto or a fixed strategy spec."),
    samples: Optional[int] = opt.SAMPLES,
    max_tokens: int = opt.MAX_TOKENS,
    threads: Optional[int] = opt.THREADS,
    raw: bool = opt.RAW,
    deadline: Optional[str] = opt.DEADLINE,
    memory: Optional[str] = opt.MEMORY,
    as_json: bool = opt.JSON,
) -> None:
    """Show the plan (strategy, samples, KV cells, predicted time and peak memory) for a prompt."""
    from edgescale.api import Runtime
    from edgescale.cli.options import ask_settings

    text = prompt if prompt is not None else read_stdin_prompt()
    settings = ask_settings(
        strategy=strategy, samples=samples, temperature=None, top_k=40, top_p=0.95, min_p=0.05,
        max_tokens=max_tokens, seed=0, answer="auto", stop=(), system=None, raw=raw, deadline=deadline,
        memory=memory,
    )
    with Runtime.load(model, backend=backend, threads=threads) as rt:
        rt.notify = lambda msg: typer.echo(msg, err=True)
        p = rt.plan(text, strategy=settings.strategy, budget=settings.budget, options=settings.options)
    if as_json:
        print_json(p.to_dict())
        return
    mb = 2**20
    typer.echo(f"strategy      {p.strategy}" + (f"  (escalates to {p.escalate_to})" if p.escalate_to else ""))
    typer.echo(f"samples       {p.k} (memory allows up to {p.max_k_memory})")
    typer.echo(f"max tokens    {p.max_new_tokens} per sample")
    typer.echo(f"KV cache      {p.n_cells} cells, {p.kv_bytes / mb:.1f} MB")
    typer.echo(f"peak memory   {p.predicted_peak_bytes / mb:.0f} MB (predicted)")
    extra = f"; stage 2 up to {p.escalate_predicted_s:.2f}s" if p.escalate_predicted_s is not None else ""
    typer.echo(f"time          {p.predicted_s:.2f}s if every sample runs to max tokens{extra}")
    for note in p.notes:
        typer.echo(f"note          {note}")
