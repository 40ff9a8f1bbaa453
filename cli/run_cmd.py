"""`edgescale run [PROMPT]`: answer one prompt."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import backends, notify, output_constraint, print_json, read_stdin_prompt


def run(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None,
                                           help="The prompt; read from stdin when omitted and stdin is not a TTY."),
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
    stop: list[str] = opt.STOP,
    system: Optional[str] = opt.SYSTEM,
    raw: bool = opt.RAW,
    deadline: Optional[str] = opt.DEADLINE,
    memory: Optional[str] = opt.MEMORY,
    as_json: bool = opt.JSON,
    policy: Optional[str] = opt.POLICY,
    kv_type: str = opt.KV_TYPE,
    json_schema: Optional[str] = opt.JSON_SCHEMA,
    regex: Optional[str] = opt.REGEX,
    choices: Optional[str] = opt.CHOICES,
    grammar: Optional[str] = opt.GRAMMAR,
    ignore_eos: bool = opt.IGNORE_EOS,
) -> None:
    """Answer one prompt with the chosen strategy; stream the text of a single sample."""
    from edgescale.api import Runtime
    from edgescale.settings import CLI_NAMES, ask_settings
    from edgescale.strategies.spec import samples_of

    text = prompt if prompt is not None else read_stdin_prompt()
    settings = ask_settings(
        strategy=strategy, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        max_tokens=max_tokens, seed=seed, answer=answer, stop=stop, system=system, raw=raw,
        deadline=deadline, memory=memory, ignore_eos=ignore_eos, names=CLI_NAMES,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, logit_bias=logit_bias,
        response_format=output_constraint(json_schema, regex, choices, grammar),
    )
    with Runtime.load(model, backend=backend, threads=threads, n_gpu_layers=gpu_layers, registry=backends(ctx),
                      notify=notify, width=samples_of(settings.strategy), kv_type=kv_type) as rt:
        rt.use_policy(policy)
        if rt.backend_choice is not None:
            notify(f"backend auto: {rt.backend_choice.name} ({rt.backend_choice.reason})")
        # constrained output is printed whole, once checked (never a prefix that may break off)
        stream = not as_json and settings.streams and settings.options.constraint is None
        on_step = _streamer() if stream else None
        result = rt.ask(text, strategy=settings.strategy, budget=settings.budget, options=settings.options,
                        on_step=on_step)
        kv = rt.kv_choice
    if as_json:
        print_json({**result.to_dict(), "kv_type": kv.to_dict() if kv is not None else None})
        if result.valid is False:
            raise typer.Exit(1)
        return
    if stream:
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.text.rstrip() + "\n")
    s = result.stats
    votes = ",".join(f"{a}:{n}" for a, n in result.votes.items()) or "-"
    typer.echo(
        f"[{result.strategy}] answer={result.answer if result.answer is not None else '-'} votes={votes} "
        f"tokens={s.total_tokens} wall={s.wall_s:.2f}s stop={result.stop_reason}",
        err=True,
    )
    constraint = settings.options.constraint
    if result.valid is False and constraint is not None:
        typer.echo(f"error: the output does not match {constraint.describe()} "
                   f"({invalid_reason(result)})", err=True)
        raise typer.Exit(1)


def invalid_reason(result) -> str:
    """Why a constrained result is not valid, in a few words."""
    if result.winner is None:
        return "no sample finished"
    reason = next((s.finish_reason for s in result.samples if s.index == result.winner), "cancelled")
    if reason == "length":
        return "it reached --max-tokens inside the structure"
    return f"it ended: {reason}"


def _streamer():
    def on_step(gen, events) -> None:
        for ev in events:
            if ev.index == 0 and ev.delta:
                sys.stdout.write(ev.delta)
                sys.stdout.flush()

    return on_step
