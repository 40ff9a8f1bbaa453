"""`edgescale devices`: what this machine has, where a model would run, and how fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import notify, print_json

if TYPE_CHECKING:
    from edgescale.devices.kv_costs import KvCosts
    from edgescale.runtime.engine import Engine

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
    kv_costs = None
    auto = backend.strip().lower() == "auto"
    n_threads = threads or placement.n_threads
    if calibrate and report.ok:
        from edgescale.api import Runtime

        typer.echo("measuring this device's speed profile for the model (about a minute)", err=True)
        with Runtime.load(model, backend="llama.cpp" if auto else backend, threads=n_threads, notify=notify) as rt:
            profile = rt.calibrate()
            kv_costs = rt.scheduler.call(_measure_kv_costs).result()  # in the loop's thread, as every decode
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
               "kv_costs": kv_costs.to_dict() if kv_costs is not None else None,
               "backend_auto": [{"width": w, "backend": c.name, "reason": c.reason} for w, c in choices]}
        print_json(out)
        return
    auto_lines = [f"auto      at {w:>2} sequence(s) a step: {c.name} ({c.reason})" for w, c in choices]
    kv_lines = []
    if kv_costs is not None:
        from edgescale.runtime.kv_types import parse_kv_type

        for name in kv_costs.costs:
            kv = parse_kv_type(name)
            verdict = kv_costs.refusal(kv) or "--kv-type auto may choose it"
            kv_lines.append(f"kv cache  {kv_costs.describe(kv)}: {verdict}")
    typer.echo("\n".join([render_text(info, placement, profile), *build_lines(record, report, check), *auto_lines,
                          *kv_lines]))


def _measure_kv_costs(engine: Engine) -> KvCosts | None:
    """What each lossy KV type costs this model here (``--kv-type auto`` reads it); None on a
    backend whose cache has one type."""
    from edgescale.devices.kv_costs import CALIBRATED_TYPES, save_kv_costs
    from edgescale.evals.quality import kv_type_cost
    from edgescale.runtime.kv_types import parse_kv_type

    types = [t for t in CALIBRATED_TYPES if engine.kv_type_refusal(parse_kv_type(t)) is None]
    if not types:
        return None
    typer.echo(f"measuring what a {' or '.join(types)} KV cache costs against f16 (seconds)", err=True)
    return save_kv_costs(engine, {t: kv_type_cost(engine, t).to_dict() for t in types})
