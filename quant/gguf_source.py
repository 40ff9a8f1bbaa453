"""Read a GGUF file's tensors and vocabulary for conversion (``gguf.GGUFReader``).

``models.gguf_file`` validates the header first (fast, bounds-checked); this
module then opens the file with ``gguf.GGUFReader`` for what conversion needs
beyond the header: tensor bytes as memory-mapped numpy views, and the full
vocabulary, merges and token types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgescale.errors import InvalidModelFile
from edgescale.models.gguf_file import GGUFHeader, read_header


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str  # GGML type name: Q4_0, Q4_1, Q8_0, Q4_K, F32, ...
    rows: int  # output features (GGUF's last dimension)
    cols: int  # input features (GGUF's first dimension)
    raw: npt.NDArray[Any]  # the stored bytes / values, a view of the mapped file


class GGUFSource:
    """An opened GGUF file: validated header + reader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: GGUFHeader = read_header(path)
        from gguf import GGUFReader

        try:
            self._reader = GGUFReader(str(path), "r")
        except (ValueError, OSError) as exc:
            raise InvalidModelFile(f"{path}: the gguf reader refused the file ({exc})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}

    def meta(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)

    def arch(self, key: str, default: Any = None) -> Any:
        return self.header.get(f"{self.header.get('general.architecture')}.{key}", default)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor(self, name: str) -> GGUFTensor:
        t = self._tensors.get(name)
        if t is None:
            raise InvalidModelFile(f"{self.path}: tensor {name!r} is missing")
        shape = [int(d) for d in t.shape]
        cols = shape[0]
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return GGUFTensor(name, t.tensor_type.name, rows, cols, t.data)

    def vector(self, name: str) -> npt.NDArray[np.float32]:
        """A 1-D float tensor (norm weights)."""
        t = self.tensor(name)
        if t.type_name not in ("F32", "F16"):
            raise InvalidModelFile(f"{self.path}: {name} is {t.type_name}, expected F32")
        return np.asarray(t.raw, dtype=np.float32).reshape(-1).copy()

    def strings(self, key: str) -> list[str]:
        field = self._reader.fields.get(key)
        if field is None:
            return []
        return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]

    def ints(self, key: str) -> npt.NDArray[np.int64]:
        field = self._reader.fields.get(key)
        if field is None:
            return np.zeros(0, np.int64)
        return np.array([int(field.parts[i][0]) for i in field.data], dtype=np.int64)

    def floats(self, key: str) -> npt.NDArray[np.float32]:
        field = self._reader.fields.get(key)
        if field is None:
            return np.zeros(0, np.float32)
        return np.array([float(field.parts[i][0]) for i in field.data], dtype=np.float32)
