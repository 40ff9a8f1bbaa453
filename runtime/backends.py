"""The backend registry: a name -> a loader that turns a model reference into an Engine.

Every place that loads a model (the API, the CLI, the bench, the quality
report) goes through one :class:`BackendRegistry`; each backend's loader
resolves its own kind of model reference (a catalog name or a GGUF path for
llama.cpp, a converted directory for ONNX Runtime) and its own placement (GPU
layers, threads). ``default_backends()`` makes a registry of the built-in
backends (importing neither library until a model is loaded); tests and
plugins register more, e.g. a scripted engine, on their own instance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


def _load_llama(request: LoadRequest) -> Engine:
    from edgescale.runtime.llama_engine import load_llama

    return load_llama(request)


def _resolve_gguf(model: str | Path | None) -> Path:
    from edgescale.models.catalog import resolve_model

    return resolve_model(model)


def _load_onnx(request: LoadRequest) -> Engine:
    from edgescale.runtime.onnx_engine import load_onnx

    return load_onnx(request)


def _resolve_onnx_dir(model: str | Path | None) -> Path:
    from edgescale.runtime.onnx_engine import resolve_model_dir

    return resolve_model_dir(model)


def _load_auto(request: LoadRequest) -> Engine:
    from edgescale.runtime.auto_backend import choose_backend

    choice = choose_backend(request.model, threads=request.threads, width=request.width)
    return default_backends().load(choice.name, replace(request, model=choice.model))


def default_backends() -> BackendRegistry:
    """A registry of the built-in backends: llama.cpp (the default), ONNX Runtime, and auto
    (whichever of the two this device's measured profiles favour; runtime.auto_backend)."""
    return BackendRegistry([
        Backend("llama.cpp", _load_llama, _resolve_gguf, aliases=("llama_cpp", "llamacpp", "llama"),
                summary="GGUF models through llama.cpp (llama-cpp-python)",
                claims=lambda p: p.suffix.lower() == ".gguf"),
        Backend("onnx", _load_onnx, _resolve_onnx_dir, aliases=("onnxruntime", "ort"),
                summary="ONNX Runtime; a model directory made by `edgescale convert`",
                claims=lambda p: p.is_dir()),
        Backend("auto", _load_auto, _resolve_gguf,
                summary="llama.cpp or ONNX Runtime, from this device's measured profiles of both"),
    ])
