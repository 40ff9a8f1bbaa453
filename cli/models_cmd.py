"""`edgescale models`: the model catalog and what is installed."""

from __future__ import annotations

from typing import Any

from edgescale.cli.common import print_json
from edgescale.cli.options import JSON


def models(as_json: bool = JSON) -> None:
    """List the catalog models, whether each is installed, how to install it, and the copies in
    other weight types made so far (NAME:TYPE, e.g. smollm2-135m:q4_0)."""
    from edgescale.models.catalog import DEFAULT_MODEL, catalog, is_installed, made_copies

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
            "copies": [f"{e.name}:{qtype.lower()}" for qtype in made_copies(e)],
        })
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgescale models (any .gguf path works too; NAME:TYPE runs a copy in another weight "
                        "type, made once: smollm2-135m:q4_0 decodes 1.5x faster at 8 sequences, at a cost in "
                        "quality, docs/BENCHMARKS.md)")
    for col in ("name", "installed", "arch", "quant", "size", "description"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        inst = "yes" if r["installed"] else f"no: {r['install']}"
        copies = f" (copies: {', '.join(r['copies'])})" if r["copies"] else ""
        table.add_row(name, inst, r["architecture"], r["quant"], f"{r['size_mb']} MB", r["description"] + copies)
    Console().print(table)
