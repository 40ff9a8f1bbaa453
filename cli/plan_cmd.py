"""`edgescale plan`: the plan a query would run, with predicted time and memory, without running it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import backends, notify, print_json, read_stdin_prompt

if TYPE_CHECKING:
    from edgescale.models.info import ModelInfo


def plan(
    ctx: typer.Context,
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
    policy: Optional[str] = opt.POLICY,
    kv_type: str = opt.KV_TYPE,
) -> None:
    """Show the plan (strategy, samples, KV cells, predicted time and peak memory) for a prompt."""
    from edgescale.api import Runtime
    from edgescale.settings import CLI_NAMES, ask_settings
    from edgescale.strategies.spec import samples_of

    text = prompt if prompt is not None else read_stdin_prompt()
    settings = ask_settings(strategy=strategy, samples=samples, max_tokens=max_tokens, raw=raw, deadline=deadline,
                            memory=memory, names=CLI_NAMES)
    with Runtime.load(model, backend=backend, threads=threads, registry=backends(ctx), notify=notify,
                      width=samples_of(settings.strategy), kv_type=kv_type) as rt:
        rt.use_policy(policy)
        p = rt.plan(text, strategy=settings.strategy, budget=settings.budget, options=settings.options)
        engine_backend, choice, kv = rt.engine.backend_name, rt.backend_choice, rt.kv_choice
        advice = _weights_advice(rt.engine.info) if engine_backend == "llama.cpp" else None
    reason = choice.reason if choice is not None else f"--backend {backend}"
    if as_json:
        print_json({**p.to_dict(), "backend": {"name": engine_backend, "reason": reason},
                    "kv_type": kv.to_dict() if kv is not None else None, "advice": advice})
        return
    typer.echo(f"backend       {engine_backend} ({reason})")
    mb = 2**20
    esc = p.escalate_to
    typer.echo(f"strategy      {p.first_stage.spec()}" + (f"  (escalates to {esc.spec()})" if esc else ""))
    typer.echo(f"samples       {p.k} (memory allows up to {p.max_k_memory})")
    typer.echo(f"max tokens    {p.max_new_tokens} per sample")
    typer.echo(f"KV cache      {p.n_cells} cells, {p.kv_bytes / mb:.1f} MB"
               + (f", {kv.kv_type.name} ({kv.reason})" if kv is not None else ""))
    if p.predicted_peak_bytes is not None:
        typer.echo(f"peak memory   {p.predicted_peak_bytes / mb:.0f} MB (predicted)")
    if p.predicted_s is not None:
        extra = f"; stage 2 up to {p.escalate_predicted_s:.2f}s" if p.escalate_predicted_s is not None else ""
        source = "measured device profile" if p.profile_measured else "estimated device profile"
        typer.echo(f"time          {p.predicted_s:.2f}s if every sample runs to max tokens{extra} ({source})")
    for note in p.notes:
        typer.echo(f"note          {note}")
    if advice is not None:
        typer.echo(f"advice        {advice}")


def _weights_advice(info: ModelInfo) -> str | None:
    """What a copy of the weights in another type would gain on this CPU (never made silently)."""
    from edgescale.devices.hardware import describe
    from edgescale.devices.placement import quant_advice

    return quant_advice(describe(measure_load=False), info)
