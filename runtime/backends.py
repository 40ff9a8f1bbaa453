"""The backend registry: a name -> a loader that turns a model reference into an Engine.

Every place that loads a model (the API, the CLI, the bench, the quality
report) goes through one :class:`BackendRegistry`; each backend's loader
resolves its own kind of model reference (a catalog name or a GGUF path for
llama.cpp, a converted directory for ONNX Runtime) and its own placement (GPU
layers, threads). ``edgescale.loader.default_backends()`` makes a registry of the
built-in backends (importing neither library until a model is loaded); tests and
plugins register more, e.g. a scripted engine, on their own instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edgescale.errors import UsageError
from edgescale.runtime.engine import Engine


@dataclass(frozen=True)
class LoadRequest:
    """What a loader gets: the model reference and how to run it."""

    model: str | Path | None  # None: the backend's default model
    threads: int
    n_gpu_layers: int | None = None  # None: the backend decides (as many as fit)
    width: int = 1  # sequences a step will usually carry (``auto`` picks the backend for it)


Loader = Callable[[LoadRequest], Engine]
Resolver = Callable[[str | Path | None], Path]


@dataclass(frozen=True)
class Backend:
    name: str  # canonical: what engines report as backend_name and profiles are keyed by
    load: Loader
    resolve: Resolver  # model reference -> the file or folder it names (no loading)
    aliases: tuple[str, ...] = ()
    summary: str = ""
    # does this backend take this model reference when none is named? (quant-report, auto)
    claims: Callable[[Path], bool] | None = None


class BackendRegistry:
    """Backends by name and alias; each registry is its own (no process-wide state)."""

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._by_name: dict[str, Backend] = {}
        self._order: list[Backend] = []
        for b in backends:
            self.register(b)

    def register(self, backend: Backend) -> None:
        for key in (backend.name, *backend.aliases):
            key = key.lower()
            if key in self._by_name and self._by_name[key].name != backend.name:
                raise ValueError(f"backend name {key!r} is taken by {self._by_name[key].name!r}")
            self._by_name[key] = backend
        self._order = [b for b in self._order if b.name != backend.name] + [backend]

    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self._order)

    def get(self, name: str) -> Backend:
        backend = self._by_name.get(name.strip().lower())
        if backend is None:
            raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(self.names())}")
        return backend

    def canonical(self, name: str) -> str:
        return self.get(name).name

    def for_model(self, model: str | Path) -> Backend:
        """The backend that claims a model reference (a directory: ONNX; else llama.cpp)."""
        path = Path(model)
        for b in self._order:
            if b.claims is not None and b.claims(path):
                return b
        return self._order[0]

    def load(self, name: str, request: LoadRequest) -> Engine:
        return self.get(name).load(request)
