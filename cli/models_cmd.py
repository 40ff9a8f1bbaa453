"""`edgescale models`: the model catalog and what is installed."""

from __future__ import annotations

from typing import Any

from edgescale.cli.common import print_json
from edgescale.cli.options import JSON


def models(as_json: bool = JSON) -> None:
    """List the catalog models, whether each is installed, and how to install it."""
    from edgescale.models.catalog import DEFAULT_MODEL, catalog, is_installed

    rows: list[dict[str, Any]] = []
    for e in catalog():
        rows.append({
            "name": e.name,
            "default": e.name == DEFAULT_MODEL,
            "installed": is_installed(e),
            "architecture": e.architecture,
            "quant": e.quant,
            "size_mb": e.size_mb,
            "description": e.description,
            "install": e.install,
            "aliases": list(e.aliases),
        })
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgescale models (any .gguf path works too)")
    for col in ("name", "installed", "arch", "quant", "size", "description"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        inst = "yes" if r["installed"] else f"no: {r['install']}"
        table.add_row(name, inst, r["architecture"], r["quant"], f"{r['size_mb']} MB", r["description"])
    Console().print(table)
