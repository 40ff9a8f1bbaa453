"""GGUF quantised blocks -> ONNX Runtime ``MatMulNBits`` weights.

``MatMulNBits`` (com.microsoft) stores a weight of N output rows and K inputs as
``B[N, K / block, block * bits / 8]`` (uint8), one float scale per block and an
optional zero point per block; a weight is ``scale * (q - zero_point)``.

* **Q4_0** (``d * (q - 8)``) and **Q8_0** (``d * q``, int8) map exactly: the
  4-bit nibbles are re-ordered (GGUF keeps element j and j+16 in one byte,
  MatMulNBits keeps j and j+1), int8 becomes uint8 around the default zero point
  128, scales are the block's fp16 ``d`` widened to float32.
* **Q4_1** (``d * q + m``) maps exactly too, as ``scale d, zero point 0`` plus a
  per-block *offset* ``m``: ``x . w = sum_b d_b (x_b . q_b) + sum_b m_b sum(x_b)``.
  The second term is a small float matmul of the input's block sums with the
  offsets (``mins``), which the graph adds next to the MatMulNBits node. This is
  the same split llama.cpp's own Q4_1 dot product makes. (MatMulNBits' float
  zero-point input would express Q4_1 directly, but ONNX Runtime 1.32's CPU
  kernel falls back to dequantising the whole matrix per call: ~30x slower.)
* Any other type (K-quants, F16, ...) is dequantised with ``gguf.quants`` and
  re-quantised to int8 (Q8_0-style, symmetric) or int4 (Q4_0-style) blocks of 32;
  the error against the dequantised source is measured and returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgescale.errors import InvalidModelFile, UsageError

BLOCK = 32
EXACT_TYPES = ("Q4_0", "Q4_1", "Q8_0")


@dataclass(frozen=True)
class PackedWeight:
    """One linear layer's weight in MatMulNBits form (rows = output features)."""

    n: int  # output features (rows)
    k: int  # input features
    bits: int  # 4 or 8
    data: npt.NDArray[np.uint8]  # (n, k / 32, 32 * bits / 8)
    scales: npt.NDArray[np.float32]  # (n, k / 32)
    mins: npt.NDArray[np.float32] | None  # (n, k / 32) per-block offsets (Q4_1), else None
    source_type: str  # the GGUF type it came from
    exact: bool  # True when no re-quantisation happened
    max_abs_error: float  # vs. the dequantised GGUF weight (0.0 when exact)
    rel_rms_error: float  # rms(error) / rms(weight)

    @property
    def n_blocks(self) -> int:
        return self.k // BLOCK

    def take_rows(self, rows: npt.NDArray[np.intp]) -> PackedWeight:
        """The same weight with its output rows re-ordered (no re-quantisation)."""
        return PackedWeight(
            n=int(rows.shape[0]),
            k=self.k,
            bits=self.bits,
            data=np.ascontiguousarray(self.data[rows]),
            scales=np.ascontiguousarray(self.scales[rows]),
            mins=None if self.mins is None else np.ascontiguousarray(self.mins[rows]),
            source_type=self.source_type,
            exact=self.exact,
            max_abs_error=self.max_abs_error,
            rel_rms_error=self.rel_rms_error,
        )

    def dequantize(self) -> npt.NDArray[np.float32]:
        """The float weight this packing represents, (n, k)."""
        if self.bits == 4:
            q = np.empty((self.n, self.n_blocks, BLOCK), np.float32)
            q[..., 0::2] = self.data & 0x0F
            q[..., 1::2] = self.data >> 4
            zero = 0.0 if self.mins is not None else 8.0
        else:
            q = self.data.astype(np.float32)
            zero = 128.0
        w = (q - zero) * self.scales[..., None]
        if self.mins is not None:
            w += self.mins[..., None]
        return w.reshape(self.n, self.k).astype(np.float32)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.mins is None else self.mins.nbytes
        return int(self.data.nbytes + self.scales.nbytes + extra)


def concat_rows(parts: list[PackedWeight]) -> PackedWeight:
    """Stack weights that share K, bits and layout along the output rows (e.g. Q, K, V)."""
    first = parts[0]
    for p in parts[1:]:
        if p.k != first.k or p.bits != first.bits or (p.mins is None) != (first.mins is None):
            raise UsageError("cannot pack weights of different layouts into one matmul")
    mins = None if first.mins is None else np.concatenate([p.mins for p in parts])
    return PackedWeight(
        n=sum(p.n for p in parts),
        k=first.k,
        bits=first.bits,
        data=np.concatenate([p.data for p in parts]),
        scales=np.concatenate([p.scales for p in parts]),
        mins=mins,
        source_type="+".join(sorted({p.source_type for p in parts})),
        exact=all(p.exact for p in parts),
        max_abs_error=max(p.max_abs_error for p in parts),
        rel_rms_error=max(p.rel_rms_error for p in parts),
    )


def same_layout(parts: list[PackedWeight]) -> bool:
    first = parts[0]
    return all(
        p.k == first.k and p.bits == first.bits and (p.mins is None) == (first.mins is None)
        for p in parts
    )


def _fp16_field(blocks: npt.NDArray[np.uint8], start: int) -> npt.NDArray[np.float32]:
    return (
        np.ascontiguousarray(blocks[..., start : start + 2])
        .view(np.float16)[..., 0]
        .astype(np.float32)
    )


def _pack_nibbles(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(…, 32) values 0..15 -> (…, 16) bytes, element 2j in the low nibble of byte j."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _gguf_nibbles(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """GGUF's 16 bytes of a 4-bit block -> its 32 values in order (j, then j + 16)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _blocks(
    raw: npt.NDArray[np.uint8], n: int, k: int, block_bytes: int, qtype: str
) -> npt.NDArray[np.uint8]:
    if k % BLOCK:
        raise InvalidModelFile(f"{qtype} weight with {k} columns is not a whole number of blocks")
    expected = n * (k // BLOCK) * block_bytes
    if raw.size != expected:
        raise InvalidModelFile(
            f"{qtype} weight holds {raw.size} bytes, expected {expected} for {n}x{k}"
        )
    return raw.reshape(n, k // BLOCK, block_bytes)


def pack_q4_0(raw: npt.NDArray[np.uint8], n: int, k: int) -> PackedWeight:
    b = _blocks(raw, n, k, 18, "Q4_0")
    return PackedWeight(
        n,
        k,
        4,
        _pack_nibbles(_gguf_nibbles(b[..., 2:])),
        _fp16_field(b, 0),
        None,
        "Q4_0",
        True,
        0.0,
        0.0,
    )


def pack_q4_1(raw: npt.NDArray[np.uint8], n: int, k: int) -> PackedWeight:
    b = _blocks(raw, n, k, 20, "Q4_1")
    return PackedWeight(
        n,
        k,
        4,
        _pack_nibbles(_gguf_nibbles(b[..., 4:])),
        _fp16_field(b, 0),
        _fp16_field(b, 2),
        "Q4_1",
        True,
        0.0,
        0.0,
    )


def pack_q8_0(raw: npt.NDArray[np.uint8], n: int, k: int) -> PackedWeight:
    b = _blocks(raw, n, k, 34, "Q8_0")
    q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return PackedWeight(
        n, k, 8, np.ascontiguousarray(q), _fp16_field(b, 0), None, "Q8_0", True, 0.0, 0.0
    )


def quantize_blocks(w: npt.NDArray[np.float32], bits: int, source_type: str) -> PackedWeight:
    """Symmetric block quantisation of a float (n, k) weight, ggml's Q8_0 / Q4_0 rounding.

    int8: scale = amax / 127, q = round(w / scale) + 128. int4: scale = (the
    signed value of largest magnitude) / -8, q = clamp(round(w / scale) + 8, 0, 15),
    as ggml's ``quantize_row_q4_0`` does.
    """
    if bits not in (4, 8):
        raise UsageError(f"int_bits must be 4 or 8, not {bits}")
    n, k = w.shape
    if k % BLOCK:
        raise InvalidModelFile(f"a weight with {k} columns cannot be cut into blocks of {BLOCK}")
    x = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    if bits == 8:
        scale = np.abs(x).max(axis=-1) / 127.0
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.rint(x * inv[..., None]), -127, 127).astype(np.int16) + 128
        data = q.astype(np.uint8)
        deq = (q - 128).astype(np.float32) * scale[..., None]
    else:
        idx = np.abs(x).argmax(axis=-1)
        extreme = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
        scale = extreme / -8.0
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(x * inv[..., None]) + 8, 0, 15).astype(np.uint8)
        data = _pack_nibbles(q)
        deq = (q.astype(np.float32) - 8.0) * scale[..., None]
    err = (deq - x).reshape(n, k)
    rms_w = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
    rms_e = float(np.sqrt(np.mean(np.square(err, dtype=np.float64))))
    return PackedWeight(
        n,
        k,
        bits,
        np.ascontiguousarray(data),
        scale.astype(np.float32),
        None,
        source_type,
        False,
        float(np.abs(err).max(initial=0.0)),
        rms_e / rms_w if rms_w > 0 else 0.0,
    )


def pack_gguf(
    raw: npt.NDArray[np.uint8], qtype: str, n: int, k: int, *, int_bits: int
) -> PackedWeight:
    """A GGUF weight tensor's bytes -> MatMulNBits form (exact where the type allows)."""
    if qtype == "Q4_0":
        return pack_q4_0(raw, n, k)
    if qtype == "Q4_1":
        return pack_q4_1(raw, n, k)
    if qtype == "Q8_0":
        return pack_q8_0(raw, n, k)
    return quantize_blocks(dequantize_gguf(raw, qtype, n, k), int_bits, qtype)


def dequantize_gguf(
    raw: npt.NDArray[np.generic], qtype: str, n: int, k: int
) -> npt.NDArray[np.float32]:
    """Any GGUF tensor -> float32 (n, k) through ``gguf.quants``."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if qtype == "F32":
        return np.asarray(raw, dtype=np.float32).reshape(n, k)
    if qtype == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(n, k)
    try:
        gtype = GGMLQuantizationType[qtype]
        out = dequantize(np.asarray(raw), gtype)
    except (KeyError, NotImplementedError) as exc:
        raise InvalidModelFile(f"GGUF tensor type {qtype} cannot be dequantised ({exc})") from None
    return np.asarray(out, dtype=np.float32).reshape(n, k)
