"""Shared CLI plumbing: option parsing helpers, output, and the error edge."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, NoReturn

import typer

from edgescale.errors import UsageError

ANSWER_KINDS = ("auto", "number", "choice", "yesno", "text")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|sec|m|min)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(text: str | None) -> float | None:
    """'2s', '500ms', '1.5', '1m' -> seconds."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"bad duration {text!r}; use e.g. 2s, 500ms, 1.5")
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    seconds = value / 1000 if unit == "ms" else value * 60 if unit in ("m", "min") else value
    if seconds <= 0:
        raise UsageError("the deadline must be positive")
    return seconds


def parse_size(text: str | None) -> int | None:
    """'512MB', '1GB', '300M', '2GiB' -> bytes (K/M/G/T are powers of 1024)."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"bad memory size {text!r}; use e.g. 512MB, 1GB")
    unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
    size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise UsageError("the memory budget must be positive")
    return size


def check_answer_kind(kind: str) -> str:
    k = kind.strip().lower()
    if k not in ANSWER_KINDS:
        raise UsageError(f"bad --answer {kind!r}; choose one of: {', '.join(ANSWER_KINDS)}")
    return k


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_stdin_prompt() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no prompt: pass one as an argument or pipe it on stdin")
    return sys.stdin.read()
