"""`edgescale batch` lines: the input read (resumable), one line parsed, submitted to a
runtime's decode loop and turned into its output record. Shared by the local loop and
the Ray workers (``edgescale.cluster``), so both write the same records."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

from edgescale.errors import EdgescaleError, UsageError
from edgescale.settings import decode_utf8

if TYPE_CHECKING:
    from edgescale.api import Runtime
    from edgescale.scheduler.request import Request
    from edgescale.strategies.result import Result


class Line:
    """One input line on its way: a submitted query, or already an error record."""

    def __init__(self, n: int, item_id: Any, future: Future[Result] | None = None,
                 error: str | None = None, request: Request | None = None) -> None:
        self.n, self.item_id, self.future, self.error, self.request = n, item_id, future, error, request

    def ready(self) -> bool:
        return self.future is None or self.future.done()

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()

    def record(self) -> dict[str, Any]:
        if self.future is not None:
            try:
                result = self.future.result()
            except EdgescaleError as exc:
                self.error = str(exc)
            else:
                return {"id": self.item_id, "ok": True, **result.to_dict()}
        return error_record(self.n, self.item_id, str(self.error))


def submit_line(rt: Runtime, n: int, raw: bytes, defaults: dict[str, Any]) -> Line:
    from edgescale.settings import record_prompt, settings_from_record

    item_id: Any = None
    try:
        item = parse_line(raw)
        item_id = item.get("id")
        settings = settings_from_record(item, defaults)
        request = rt.request(record_prompt(item), strategy=settings.strategy, budget=settings.budget,
                             options=settings.options)
        return Line(n, item_id, rt.scheduler.submit(request), request=request)
    except EdgescaleError as exc:
        return Line(n, item_id, error=str(exc))


def parse_line(raw: bytes) -> dict[str, Any]:
    line = decode_utf8(raw, "the line")
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise UsageError("expected a JSON object")
    return item


def error_record(n: int, item_id: Any, error: str) -> dict[str, Any]:
    """The record of a line that could not be answered."""
    return {"id": item_id, "line": n, "ok": False, "error": f"line {n}: {error}"}


def line_id(raw: bytes) -> Any:
    """The "id" of a line, if it has one (for the error record of a line a worker never answered)."""
    try:
        item = parse_line(raw)
    except EdgescaleError:
        return None
    return item.get("id")


def answered_lines(path: Path) -> int:
    """Complete result lines in an earlier run's output (a cut-off last line does not count)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --resume file {path}: {exc.strerror}") from None
    complete = data.split(b"\n")[:-1]  # whatever follows the last newline was cut off
    return sum(1 for line in complete if line.strip())


def input_lines(stream: BinaryIO, skip: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the non-blank input lines after the first ``skip`` of them."""
    seen = 0
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        seen += 1
        if seen > skip:
            yield n, line
