"""Validate a GGUF file and read its metadata without handing it to llama.cpp.

A bad file must never reach ``llama_model_load_from_file``: a truncated or
foreign file is refused here with :class:`InvalidModelFile` after checking the
magic, the version, every key/value record, every tensor record and that each
tensor's data lies inside the file.

The ``gguf`` package supplies the format tables (value types, quant block
sizes). Its ``GGUFReader`` builds numpy views for every vocabulary string,
which takes seconds on a 49k-token vocabulary; this module walks the header
once and skips array bodies instead, so validating costs milliseconds.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgescale.errors import InvalidModelFile

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
# Value type ids of the GGUF spec -> struct format of a scalar of that type.
_SCALAR_FORMATS: dict[int, str] = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_STRING, _ARRAY = 8, 9
_MIN_KV_RECORD, _MIN_TENSOR_RECORD = 14, 25
# Arrays longer than this are not materialised (vocabularies, merges, scores).
_MAX_KEPT_ARRAY = 64


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int  # absolute offset in the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """Everything edgescale needs from a GGUF file, read once."""

    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[TensorRecord, ...] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def shown(text: str, limit: int = 60) -> str:
    """A name read from the file, fit for a one-line message: quoted with control
    characters escaped (a corrupt length can make a "key" of megabytes of binary), cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Cursor:
    """Bounds-checked little-endian reader over a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise InvalidModelFile(
                f"{self.path}: truncated GGUF (ends inside {shown(what)} at byte {self.pos})"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize("<" + fmt)
        self._need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        self._need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = struct.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self._need(8, what)
            (n,) = unpack("<Q", buf, pos)
            pos += 8 + n
        if pos > end:
            self.pos = end
            raise InvalidModelFile(f"{self.path}: truncated GGUF (ends inside {shown(what)})")
        self.pos = pos


def _read_value(cur: _Cursor, type_id: int, key: str) -> tuple[Any, int | None]:
    """Read one value; returns (value, array_length or None)."""
    if type_id in _SCALAR_FORMATS:
        return cur.scalar(_SCALAR_FORMATS[type_id], key), None
    if type_id == _STRING:
        return cur.string(key), None
    if type_id != _ARRAY:
        raise InvalidModelFile(f"{cur.path}: unknown GGUF value type {type_id} for key {shown(key)}")
    item_type = cur.scalar("I", key)
    count = cur.scalar("Q", key)
    if item_type == _STRING:
        cur._need(8 * count, key)  # every string has at least its 8-byte length
        if count <= _MAX_KEPT_ARRAY:
            return [cur.string(key) for _ in range(count)], count
        cur.skip_strings(count, key)
        return None, count
    if item_type == _ARRAY:
        raise InvalidModelFile(f"{cur.path}: nested arrays are not supported (key {shown(key)})")
    if item_type not in _SCALAR_FORMATS:
        raise InvalidModelFile(f"{cur.path}: unknown GGUF array type {item_type} for key {shown(key)}")
    fmt = _SCALAR_FORMATS[item_type]
    size = struct.calcsize("<" + fmt) * count
    cur._need(size, key)
    if count <= _MAX_KEPT_ARRAY:
        values = list(struct.unpack_from(f"<{count}{fmt}", cur.buf, cur.pos))
    else:
        values = None
    cur.pos += size
    return values, count


def _tensor_nbytes(path: Path, name: str, shape: tuple[int, ...], type_id: int) -> tuple[str, int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise InvalidModelFile(
            f"{path}: tensor {shown(name)} has unknown type id {type_id} (newer GGUF than this gguf package?)"
        ) from None
    n_elements = 1
    for d in shape:
        n_elements *= d
    if shape and shape[0] % block_size:
        raise InvalidModelFile(f"{path}: tensor {shown(name)} row size is not a multiple of its block")
    return qtype.name, n_elements // block_size * type_size


def read_header(path: str | Path) -> GGUFHeader:
    """Read and validate a GGUF file's header; raise InvalidModelFile if unusable."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise InvalidModelFile(f"{p}: not a regular file")
        if size < 24:
            raise InvalidModelFile(f"{p}: not a GGUF file ({size} bytes)")
        with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, p, size)
    except OSError as exc:
        raise InvalidModelFile(f"{p}: cannot read ({exc.strerror or exc})") from None


def _parse(buf: mmap.mmap, p: Path, size: int) -> GGUFHeader:
    if buf[:4] != _MAGIC:
        raise InvalidModelFile(f"{p}: not a GGUF file (bad magic {bytes(buf[:4])!r})")
    cur = _Cursor(buf, p)
    cur.pos = 4
    version = cur.scalar("I", "version")
    if version not in _SUPPORTED_VERSIONS:
        raise InvalidModelFile(f"{p}: unsupported GGUF version {version}")
    n_tensors = cur.scalar("Q", "tensor count")
    n_kv = cur.scalar("Q", "metadata count")
    # A KV record takes at least 14 bytes (key length, a 1-byte key, type, a 1-byte value),
    # a tensor record 25: bound the counts by what the file could hold so a corrupt count
    # cannot make the reader loop for hours.
    if n_kv * _MIN_KV_RECORD + n_tensors * _MIN_TENSOR_RECORD > size - cur.pos:
        raise InvalidModelFile(f"{p}: corrupt GGUF header (impossible record counts)")
    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if not key or key in metadata or key in array_lengths:
            raise InvalidModelFile(f"{p}: corrupt GGUF (an empty or repeated metadata key {shown(key)})")
        type_id = cur.scalar("I", key)
        value, length = _read_value(cur, type_id, key)
        if length is not None:
            array_lengths[key] = length
        if value is not None:
            metadata[key] = value
    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        if not name:
            raise InvalidModelFile(f"{p}: corrupt GGUF (a tensor without a name)")
        n_dims = cur.scalar("I", name)
        if not 1 <= n_dims <= 8:
            raise InvalidModelFile(f"{p}: tensor {shown(name)} has {n_dims} dimensions")
        shape = tuple(cur.scalar("Q", name) for _ in range(n_dims))
        type_id = cur.scalar("I", name)
        offset = cur.scalar("Q", name)
        raw_tensors.append((name, shape, type_id, offset))
    alignment = metadata.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or not 1 <= alignment <= 1 << 16:
        raise InvalidModelFile(f"{p}: corrupt GGUF (general.alignment {alignment!r:.40})")
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, shape, type_id, offset in raw_tensors:
        type_name, n_bytes = _tensor_nbytes(p, name, shape, type_id)
        start = data_start + offset
        if start + n_bytes > size:
            raise InvalidModelFile(
                f"{p}: truncated GGUF (tensor {shown(name)} needs bytes up to {start + n_bytes}, "
                f"file has {size})"
            )
        tensors.append(TensorRecord(name, shape, type_id, type_name, start, n_bytes))
    if not tensors:
        raise InvalidModelFile(f"{p}: GGUF file holds no tensors")
    return GGUFHeader(p, version, size, metadata, array_lengths, tuple(tensors))
