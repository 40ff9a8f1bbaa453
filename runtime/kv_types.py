"""KV cache element types: what ``--kv-type`` names and what a cell then costs.

A type is one llama.cpp ``ggml_type`` for keys and values (``q8_0``), or one for each
(``q8_0/f16``: keys in q8_0, values in f16). Quantized values need llama.cpp's flash
attention kernel (the only one that reads them); quantized keys do not. ``auto`` is not
a type: the runtime resolves it from the memory budget (``strategies.planner.kv_type_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgescale.errors import UsageError
from edgescale.models.info import KV_TYPE_BYTES

KV_ELEMENT_TYPES = ("f16", "bf16", "q8_0", "q4_0")  # what --kv-type offers (f32 too, for tests)
LOSSLESS = ("f32", "f16")  # f16 is what the model computes its K and V in: no loss


@dataclass(frozen=True)
class KvType:
    """Element types of the cache's keys and values."""

    k: str = "f16"
    v: str = "f16"

    @property
    def name(self) -> str:
        return self.k if self.k == self.v else f"{self.k}/{self.v}"

    @property
    def lossy(self) -> bool:
        return self.k not in LOSSLESS or self.v not in LOSSLESS

    @property
    def quantized_v(self) -> bool:
        return self.v.startswith("q")

    @property
    def bytes_per_element(self) -> float:
        """Mean bytes of one K and one V element (for comparing types)."""
        return (KV_TYPE_BYTES[self.k] + KV_TYPE_BYTES[self.v]) / 2

    def __str__(self) -> str:
        return self.name


F16 = KvType()


def parse_kv_type(text: str | KvType) -> KvType:
    """``f16``, ``q8_0``, ``q4_0``, ``bf16`` or ``K/V`` (``q8_0/f16``) -> KvType; UsageError
    (one line) for anything else."""
    if isinstance(text, KvType):
        return text
    parts = [p.strip().lower() for p in str(text).split("/")]
    allowed = (*KV_ELEMENT_TYPES, "f32")
    if len(parts) not in (1, 2) or any(p not in allowed for p in parts):
        raise UsageError(f"bad KV cache type {text!r}; use one of {', '.join(KV_ELEMENT_TYPES)}, auto, "
                         "or K/V such as q8_0/f16")
    return KvType(parts[0], parts[-1])
