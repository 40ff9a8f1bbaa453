"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgescale.models.catalog import resolve_model

# The CLI with Ctrl-C handled as a terminal user's: a process started with SIGINT ignored (a
# background job of a non-interactive shell, as `nohup cmd &` is) passes that on to its children,
# and Python leaves an ignored SIGINT ignored; tests that interrupt the CLI start it this way.
INTERRUPTIBLE_CLI = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, "
                     "signal.default_int_handler); sys.argv[0] = 'edgescale'; "
                     "from edgescale.cli.app import entry; entry()"]


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
