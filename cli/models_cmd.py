"""`edgescale models`: the catalog and the pulled models, what each is, and `show` / `rm`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgescale.cli.common import print_json
from edgescale.cli.options import JSON


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def models(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List the catalog models and the pulled ones: file, size, architecture, parameters, quant,
    context length, chat template (and its family), KV bytes per token; how to install a catalog
    model that is not installed, and the copies in other weight types made so far (NAME:TYPE)."""
    if ctx.invoked_subcommand is not None:
        return
    from edgescale.models.listing import all_facts

    rows = all_facts()
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgescale models (`edgescale pull hf:ORG/REPO:QUANT` adds one; any .gguf path works too; "
                        "NAME:TYPE runs a catalog model as a copy in another weight type)")
    for col in ("name", "source", "arch", "params", "quant", "size", "context", "chat template", "KV/token"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        if not r["installed"]:
            source = f"not installed: {r['install']}"
        else:
            source = "catalog" if r["source"] == "catalog" else r["source"]
        template = "-" if r["chat_template"] is None else (r["chat_template_family"] or "yes") if r["chat_template"] \
            else "none"
        kv = "-" if r["kv_bytes_per_token"] is None else f"{r['kv_bytes_per_token'] / 1024:.0f} KiB"
        ctx_len = "-" if r["context_length"] is None else f"{r['context_length']:,}"
        table.add_row(name, source, r["architecture"], _params(r["parameters"]), r["quant"], _size(r["size_bytes"]),
                      ctx_len, template, kv)
    console = Console()
    console.print(table)
    copies = [c for r in rows for c in r.get("copies", [])]
    if copies:
        console.print(f"copies in other weight types: {', '.join(copies)}")
    from edgescale.models.store import partial_downloads

    for part in partial_downloads():
        console.print(f"unfinished download: {part} ({part.stat().st_size / 1e6:,.1f} MB; the same `edgescale pull` "
                      f"resumes it, `edgescale models rm {part.parent.name}` deletes it)")


def show(name: str = typer.Argument(..., help="A catalog name, a pulled model's name, or a .gguf path."),
         as_json: bool = JSON) -> None:
    """Everything `models` knows of one model."""
    from edgescale.errors import ModelNotFound
    from edgescale.models.listing import facts_of

    facts = facts_of(name)
    if facts is None:
        raise ModelNotFound(f"no model named {name!r} (`edgescale models` lists them)")
    if as_json:
        print_json(facts)
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        typer.echo(f"{key:<{width}}  {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def rm(name: str = typer.Argument(..., help="A pulled model's name.")) -> None:
    """Delete a pulled model (its file, manifest and any partial download). Catalog models are
    pip packages: uninstall those with pip."""
    from edgescale.errors import UsageError
    from edgescale.models.catalog import find_entry
    from edgescale.models.download import mb
    from edgescale.models.store import remove

    if find_entry(name) is not None:
        raise UsageError(f"{name!r} is a catalog model, installed by pip; `pip uninstall` its package instead")
    gone = remove(name)
    if isinstance(gone, Path):
        typer.echo(f"removed the unfinished download in {gone}", err=True)
    else:
        typer.echo(f"removed {gone.name} ({mb(gone.size)}, {gone.path})", err=True)


def models_app() -> typer.Typer:
    app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False,
                      help="The catalog and the pulled models.")
    app.callback(invoke_without_command=True)(models)
    app.command("show")(show)
    app.command("rm")(rm)
    return app
