"""Shared CLI plumbing: option parsing helpers, output, and the error edge."""

from __future__ import annotations

import json
import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, TextIO

import typer

from edgescale.errors import UsageError

if TYPE_CHECKING:
    from edgescale.runtime.backends import BackendRegistry
    from edgescale.runtime.constraints import Constraint


def print_json(obj: Any, stream: TextIO | None = None) -> None:
    """One JSON line on ``stream`` (default: stdout as it is now)."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


def read_stdin_prompt() -> str:
    from edgescale.settings import decode_utf8

    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt: pass one as an argument or pipe it on stdin")
    if hasattr(sys.stdin, "buffer"):
        raw = sys.stdin.buffer.read()
    else:
        raw = sys.stdin.read().encode("utf-8", "surrogateescape")
    return decode_utf8(raw, "stdin")


def backends(ctx: typer.Context) -> BackendRegistry:
    """The backend registry this command runs with: the one ``cli.app.main`` was given
    (tests register a scripted engine there), else the built-in backends."""
    from edgescale.loader import default_backends
    from edgescale.runtime.backends import BackendRegistry

    obj = ctx.find_root().obj
    return obj if isinstance(obj, BackendRegistry) else default_backends()


def notify(message: str) -> None:
    """A one-line notice on stderr (the API's ``notify`` hook)."""
    typer.echo(message, err=True)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a record is written and counted, so an interrupted run never
    reports one more or one fewer line than it wrote. (A Python-level handler: the signal may
    land on any of llama.cpp's threads, but Python runs handlers in the main thread.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt


def output_constraint(json_schema: str | None, regex: str | None, choices: str | None,
                      grammar: str | None) -> Constraint | None:
    """The output constraint of --json-schema FILE|JSON, --regex, --choices or --grammar FILE
    (at most one), checked: a bad one is a one-line UsageError naming the flag."""
    from edgescale.runtime.constraints import parse_constraint

    given = {k: v for k, v in (("--json-schema", json_schema), ("--regex", regex), ("--choices", choices),
                               ("--grammar", grammar)) if v is not None}
    if len(given) > 1:
        raise UsageError(f"give one output constraint, not {' and '.join(given)}")
    if json_schema is not None:
        text = json_schema if json_schema.lstrip().startswith("{") else _read_file(json_schema, "--json-schema")
        return parse_constraint("json_schema", text, where="--json-schema")
    if regex is not None:
        return parse_constraint("regex", regex, where="--regex")
    if choices is not None:
        return parse_constraint("choices", choices, where="--choices")
    if grammar is not None:
        return parse_constraint("grammar", _read_file(grammar, "--grammar"), where="--grammar")
    return None


def _read_file(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{flag}: cannot read {path}: {reason}") from None
