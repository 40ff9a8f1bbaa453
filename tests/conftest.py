"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from edgescale.models.catalog import resolve_model


@pytest.fixture(scope="session")
def model_path() -> Path:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator["object"]:
    from edgescale.runtime.llama_engine import LlamaCppEngine

    eng = LlamaCppEngine.load(model_path, n_threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def runtime(engine: "object") -> "object":
    from edgescale.api import Runtime

    return Runtime(engine, "smollm2-135m")  # type: ignore[arg-type]
