"""What `edgescale models` shows of a model: facts read from its GGUF header (milliseconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgescale.errors import EdgescaleError
from edgescale.models.catalog import DEFAULT_MODEL, CatalogEntry, catalog, find_entry, is_installed, made_copies
from edgescale.models.info import ModelInfo, chat_template_family, read_model_info
from edgescale.models.store import PulledModel, find_pulled, pulled_models


def file_facts(info: ModelInfo) -> dict[str, Any]:
    return {
        "file": str(info.path),
        "size_bytes": info.file_size,
        "architecture": info.architecture,
        "parameters": info.n_params,
        "quant": info.quant,
        "context_length": info.n_ctx_train,
        "chat_template": info.chat_template is not None,
        "chat_template_family": chat_template_family(info.chat_template),
        "kv_bytes_per_token": int(info.kv_bytes_per_cell()),
    }


def catalog_facts(entry: CatalogEntry, *, read_file: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name, "source": "catalog", "default": entry.name == DEFAULT_MODEL,
        "installed": is_installed(entry), "description": entry.description, "install": entry.install,
        "aliases": list(entry.aliases), "copies": [f"{entry.name}:{q.lower()}" for q in made_copies(entry)],
        "file": None, "size_bytes": entry.size_mb * 1_000_000, "architecture": entry.architecture,
        "parameters": None, "quant": entry.quant, "context_length": None, "chat_template": None,
        "chat_template_family": None, "kv_bytes_per_token": None,
    }
    if row["installed"] and read_file:
        try:
            row.update(file_facts(read_model_info(entry.locate(entry))))
        except EdgescaleError as exc:  # e.g. Gemma's parts not assembled yet and no room to
            row["error"] = str(exc)
    return row


def pulled_facts(model: PulledModel) -> dict[str, Any]:
    row: dict[str, Any] = {"name": model.name, "source": model.source, "default": False, "installed": True,
                           "sha256": model.sha256, "revision": model.revision, "pulled_at": model.pulled_at}
    try:
        row.update(file_facts(read_model_info(model.path)))
    except EdgescaleError as exc:
        row.update({"file": str(model.path), "size_bytes": model.size, "error": str(exc)})
    return row


def all_facts() -> list[dict[str, Any]]:
    """The catalog's models, then the pulled ones."""
    return [catalog_facts(e) for e in catalog()] + [pulled_facts(m) for m in pulled_models()]


def facts_of(name: str) -> dict[str, Any] | None:
    entry = find_entry(name)
    if entry is not None:
        return catalog_facts(entry)
    model = find_pulled(name)
    if model is not None:
        return pulled_facts(model)
    path = Path(name).expanduser()
    if path.is_file():
        return {"name": path.stem, "source": "path", "default": False, "installed": True,
                **file_facts(read_model_info(path))}
    return None
