"""The benchmark's record store: one JSON object per (question, strategy) query, resumable.

Records live in ``<out>/results.jsonl``, appended and flushed one at a time,
so an interrupted run loses at most the query in flight. A record is *done*
when its key matches: dataset, item id, strategy, model, seed and the
settings fingerprint (every option that can change what the model
generates; see :func:`settings_id`). Rerunning with the same ``--out`` skips
done records; changing any setting makes new keys, so those queries run
again, next to the old records in the same file.

A line that does not parse (a write cut short by a crash) is skipped on
reading and left in place; the next append starts on a fresh line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgescale.errors import UsageError

RESULTS_FILE = "results.jsonl"
RecordKey = tuple[str, str, str, str, int, str]  # dataset, item, strategy, model, seed, settings id


def settings_id(settings: Mapping[str, Any]) -> str:
    """A short stable fingerprint of a settings mapping (canonical JSON, sha256)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def record_key(record: Mapping[str, Any]) -> RecordKey:
    return (
        str(record["dataset"]),
        str(record["item_id"]),
        str(record["strategy_spec"]),
        str(record["model"]),
        int(record["seed"]),
        str(record["settings_id"]),
    )


@dataclass(frozen=True)
class LoadReport:
    records: int
    skipped_lines: int


class ResultStore:
    """Finished records, in memory and (when ``folder`` is given) in ``folder/results.jsonl``."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._records: dict[RecordKey, dict[str, Any]] = {}
        self.load_report = LoadReport(0, 0)
        if folder is not None:
            self._open(folder)

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / RESULTS_FILE

    def _open(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"output folder {folder} is a file")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {folder}: {exc}") from exc
        path = folder / RESULTS_FILE
        if not path.exists():
            return
        skipped = 0
        for record in _read_lines(path):
            if record is None:
                skipped += 1
                continue
            self._records[record_key(record)] = record
        self.load_report = LoadReport(len(self._records), skipped)

    def __contains__(self, key: RecordKey) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: RecordKey) -> dict[str, Any] | None:
        return self._records.get(key)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Keep ``record`` and append it to the file at once (flushed); return it as stored."""
        key = record_key(record)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        path = self.path
        if path is not None:
            try:
                with path.open("a+b") as fh:
                    if fh.tell() > 0:
                        fh.seek(-1, 2)
                        if fh.read(1) != b"\n":  # a torn last line: start a fresh one
                            fh.write(b"\n")
                    fh.write(line.encode("utf-8") + b"\n")
                    fh.flush()
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc}") from exc
        stored: dict[str, Any] = json.loads(line)  # the form a reload gives (lists, not tuples)
        self._records[key] = stored
        return stored

    def records(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())


def _read_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line's record, or None for a line that is not a complete record."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_key(record)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            yield None
            continue
        yield record if isinstance(record, dict) else None
