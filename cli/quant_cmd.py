"""`edgescale convert`, `edgescale quantize`, `edgescale quant-report`: other formats, smaller weights,
and what they cost in quality."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import print_json


def _threads(threads: Optional[int]) -> int:
    from edgescale.devices.cpu import default_threads

    return threads or default_threads()


@contextmanager
def _overwrite_hint() -> Iterator[None]:
    """The library says what exists; the CLI names its flag."""
    from edgescale.errors import OutputExists, UsageError

    try:
        yield
    except OutputExists as exc:
        raise UsageError(f"{exc}; add --overwrite to replace it") from None


def _jsonable(obj: Any) -> Any:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(obj).items()}


def convert(
    model: str = typer.Argument(..., help="GGUF file, catalog name or pulled model (llama or gemma3 architecture)."),
    out_dir: Path = typer.Argument(..., help="Directory to write model.onnx, tokenizer.json and the config."),
    int_bits: int = typer.Option(8, "--int-bits", help="Block width (4 or 8) for weights that are re-quantised."),
    float_activations: bool = typer.Option(False, "--float-activations",
                                           help="Float activations (slower, closer to the exact weights)."),
    max_positions: Optional[int] = typer.Option(None, "--max-positions", min=16,
                                                help="Longest sequence the model will run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    as_json: bool = opt.JSON,
) -> None:
    """Convert a GGUF to an ONNX Runtime model (Q4_0/Q4_1/Q8_0 weights carried over exactly)."""
    from edgescale.errors import UsageError
    from edgescale.models.catalog import resolve_model
    from edgescale.quant.gguf_to_onnx import convert as run

    if int_bits not in (4, 8):
        raise UsageError("--int-bits must be 4 or 8")
    with _overwrite_hint():
        report = run(resolve_model(model), out_dir, int_bits=int_bits,
                     accuracy_level=0 if float_activations else 4, max_positions=max_positions, overwrite=overwrite)
    if as_json:
        out = _jsonable(report)
        out["tensors"] = [asdict(t) for t in report.tensors]
        print_json(out)
    else:
        typer.echo(report.summary())


def quantize(
    model: str = typer.Argument(..., help="Source GGUF file, catalog name or pulled model."),
    out: Path = typer.Argument(..., help="Destination .gguf file."),
    qtype: str = typer.Option(..., "--type",
                              help="Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K_S | Q4_K_M | Q5_K_M | Q6_K | F16"),
    report: bool = typer.Option(False, "--report", help="Also measure perplexity and greedy agreement vs the source."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing destination."),
    threads: Optional[int] = opt.THREADS,
    as_json: bool = opt.JSON,
) -> None:
    """Quantise a GGUF with llama.cpp's own quantiser (warns when the source is already quantised)."""
    from edgescale.evals.quality import quality_report
    from edgescale.models.catalog import resolve_model
    from edgescale.quant.quantize import quantize as run

    src = resolve_model(model)
    n = _threads(threads)
    with _overwrite_hint():
        result = run(src, out, qtype, n_threads=n, overwrite=overwrite)
    quality = quality_report(out, src, n_threads=n) if report else None
    if as_json:
        print_json({"quantize": _jsonable(result), "quality": asdict(quality) if quality else None})
        return
    typer.echo(result.summary())
    if quality is not None:
        typer.echo(quality.summary())


def quant_report(
    candidate: str = typer.Argument(..., help="A .gguf file (llama.cpp) or a converted ONNX directory."),
    reference: Optional[str] = typer.Option(None, "--reference", "-r", help="The source to compare with."),
    floor: bool = typer.Option(
        True,
        "--floor/--no-floor",
        help="With a GGUF reference: also measure llama.cpp against itself (flash attention off vs on), "
        "the agreement rounding alone allows.",
    ),
    threads: Optional[int] = opt.THREADS,
    as_json: bool = opt.JSON,
) -> None:
    """Perplexity on a fixed text (shipped with edgescale) and greedy agreement with a reference."""
    from edgescale.evals.quality import quality_report
    from edgescale.models.catalog import resolve_model

    def path_of(name: str) -> Path:
        p = Path(name).expanduser()
        return p if p.is_dir() else resolve_model(name)

    ref = path_of(reference) if reference else None
    quality = quality_report(path_of(candidate), ref, n_threads=_threads(threads), noise_floor=floor)
    if as_json:
        print_json(asdict(quality))
    else:
        typer.echo(quality.summary())
