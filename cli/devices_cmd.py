"""`edgescale devices`: what this machine has, where a model would run, and how fast."""

from __future__ import annotations

from typing import Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import notify, print_json

TYPICAL_CELLS = 2048  # KV cells assumed for the placement shown (a few samples of a few hundred tokens)


def devices(
    model: Optional[str] = opt.MODEL,
    backend: str = typer.Option("llama.cpp", "--backend", help="llama.cpp, onnx (a converted folder as --model), "
                                "or auto: with --calibrate, convert the model to ONNX (cached) and measure both."),
    threads: Optional[int] = opt.THREADS,
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure the speed profile of --model now (cached)."),
    as_json: bool = opt.JSON,
) -> None:
    """Describe the CPU, memory, GPUs and backends; with --calibrate, measure a speed profile."""
    from dataclasses import asdict

    from edgescale.devices.buildcheck import assess, installed_build, probe
    from edgescale.devices.facts import to_dict
    from edgescale.devices.hardware import describe
    from edgescale.devices.placement import place
    from edgescale.devices.profile import profile_to_dict
    from edgescale.devices.report import build_lines, render_text
    from edgescale.models.catalog import resolve_model
    from edgescale.models.info import read_model_info

    model_path = resolve_model(model)
    report = probe(model_path)  # in a subprocess: a build that crashes here is reported, not fatal
    info = describe()
    model_info = read_model_info(model_path)
    placement = place(info, model_info, kv_bytes=model_info.kv_bytes(TYPICAL_CELLS), n_threads=threads)
    record = installed_build()
    check = assess(report.system_info, info.cpu.features, info.cpu.arch) if report.system_info else None
    profile = None
    auto = backend.strip().lower() == "auto"
    n_threads = threads or placement.n_threads
    if calibrate and report.ok:
        from edgescale.api import Runtime

        typer.echo("measuring this device's speed profile for the model (about a minute)", err=True)
        with Runtime.load(model, backend="llama.cpp" if auto else backend, threads=n_threads, notify=notify) as rt:
            profile = rt.calibrate()
        if auto:
            from edgescale.loader import ensure_onnx_form

            typer.echo("converting the model to ONNX (cached) and measuring ONNX Runtime too", err=True)
            with Runtime.load(ensure_onnx_form(model_path), backend="onnx", threads=n_threads, notify=notify) as rt:
                rt.calibrate()
    choices = []
    if auto:
        from edgescale.loader import choose_backend

        choices = [(w, choose_backend(model_path, threads=n_threads, width=w)) for w in (1, 8, 32)]
    if as_json:
        build = {"record": record, "report": asdict(report),
                 "assessment": {**asdict(check), "verdict": check.verdict} if check is not None else None}
        out = {"device": to_dict(info), "model": str(model_info.path), "placement": placement.__dict__,
               "llama_cpp_build": build, "profile": profile_to_dict(profile) if profile is not None else None,
               "backend_auto": [{"width": w, "backend": c.name, "reason": c.reason} for w, c in choices]}
        print_json(out)
        return
    auto_lines = [f"auto      at {w:>2} sequence(s) a step: {c.name} ({c.reason})" for w, c in choices]
    typer.echo("\n".join([render_text(info, placement, profile), *build_lines(record, report, check), *auto_lines]))
