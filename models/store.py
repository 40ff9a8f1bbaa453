"""The local model store: models brought in by ``edgescale pull``, usable by name.

One folder per model under the store (``$EDGESCALE_MODELS``, else ``store`` in edgescale's
cache folder): the GGUF under its own file name, and ``edgescale-model.json``, the manifest
(where it came from, its sha256, when). A model is in the store once its manifest is written,
and the manifest is written last, after the file is complete, checksummed and validated: a
folder without one holds an unfinished download (``<file>.part``), which the next pull of the
same source resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from edgescale.errors import ModelNotFound, UsageError

STORE_ENV = "EDGESCALE_MODELS"
MANIFEST = "edgescale-model.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")


def cache_dir() -> Path:
    """edgescale's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgescale"


def store_dir() -> Path:
    """The store's folder: ``$EDGESCALE_MODELS``, else ``store`` in edgescale's cache folder."""
    override = os.environ.get(STORE_ENV)
    return Path(override).expanduser() if override else cache_dir() / "store"


@dataclass(frozen=True)
class PulledModel:
    """A model in the store, as its manifest describes it."""

    name: str
    file: str  # the GGUF's file name, in the model's folder
    source: str  # what was pulled: hf:ORG/REPO:FILE, a URL, or the imported path
    sha256: str
    size: int
    pulled_at: float  # seconds since the epoch
    revision: str | None = None  # the Hugging Face commit, when known
    etag: str | None = None
    request: str | None = None  # the source as the user wrote it (hf:ORG/REPO:Q4_K_M)

    @property
    def folder(self) -> Path:
        return store_dir() / self.name

    @property
    def path(self) -> Path:
        return self.folder / self.file


def check_name(name: str) -> str:
    """A store name: lower-case letters, digits, ``.``, ``_``, ``-`` (no ``:`` or ``/``: those
    mean ``NAME:TYPE`` and paths)."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"model name {name!r}: use lower-case letters, digits, '.', '_' and '-' "
                         "(at most 100 characters, starting with a letter or digit)")
    return name


def name_for_file(filename: str) -> str:
    """The default store name for a GGUF file: its stem, lower-cased, other characters as ``-``."""
    stem = Path(filename).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name[:100] or "model"


def model_folder(name: str) -> Path:
    return store_dir() / check_name(name)


def _read_manifest(folder: Path) -> PulledModel | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        model = PulledModel(**{k: data[k] for k in PulledModel.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return model if model.name == folder.name else None


def pulled_models() -> list[PulledModel]:
    """The models in the store with a readable manifest and their file present, by name."""
    root = store_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        model = _read_manifest(folder)
        if model is not None and model.path.is_file():
            found.append(model)
    return found


def find_pulled(reference: str) -> PulledModel | None:
    """The pulled model a reference names: its store name, or the source it was pulled from."""
    key = reference.strip()
    for model in pulled_models():
        if key.lower() == model.name or key in (model.source, model.request):
            return model
    return None


def register(model: PulledModel) -> PulledModel:
    """Write the manifest (atomically): from now on the model is in the store."""
    folder = model_folder(model.name)
    if not model.path.is_file():
        raise ModelNotFound(f"{model.path}: no such file to register")
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(model), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return model


def partial_downloads() -> list[Path]:
    """Unfinished downloads in the store (``<name>/<file>.part``, no manifest yet)."""
    root = store_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.part") if not (p.parent / MANIFEST).is_file())


def remove(name: str) -> PulledModel | Path:
    """Delete a pulled model's folder (file, manifest and any partial download), or the folder of
    an unfinished download of that name; what was removed."""
    model = find_pulled(name)
    if model is not None and model.name == name.strip().lower():
        shutil.rmtree(model.folder)
        return model
    folder = store_dir() / name.strip().lower()
    if _NAME.fullmatch(folder.name) and folder.is_dir() and not (folder / MANIFEST).exists():
        shutil.rmtree(folder)
        return folder
    names = ", ".join(m.name for m in pulled_models()) or "none"
    raise ModelNotFound(f"no pulled model named {name!r} (pulled: {names})")


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock: one pull of a model at a time (a second waits for the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def new_manifest(name: str, path: Path, *, source: str, sha256: str, revision: str | None = None,
                 etag: str | None = None) -> PulledModel:
    return PulledModel(name=name, file=path.name, source=source, sha256=sha256, size=path.stat().st_size,
                       pulled_at=time.time(), revision=revision, etag=etag)
