"""GGUF blocks -> MatMulNBits packing: exactness, row order, and ONNX Runtime's reading of it."""

from __future__ import annotations

import numpy as np
import pytest

from edgescale.errors import InvalidModelFile, UsageError
from edgescale.quant.gguf_blocks import (
    PackedWeight,
    concat_rows,
    pack_gguf,
    quantize_blocks,
    same_layout,
)
from edgescale.quant.gguf_to_onnx import _rope_unpermute

N, K = 24, 96


def _gguf_quantized(qtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(seed).standard_normal((N, K)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType[qtype])
    return raw, dequantize(raw, GGMLQuantizationType[qtype]).reshape(N, K)


@pytest.mark.parametrize("qtype,bits", [("Q4_0", 4), ("Q4_1", 4), ("Q8_0", 8)])
def test_exact_types_carry_over_bit_for_bit(qtype: str, bits: int) -> None:
    raw, ref = _gguf_quantized(qtype)
    w = pack_gguf(raw, qtype, N, K, int_bits=8)
    assert w.exact and w.bits == bits and w.max_abs_error == 0.0
    assert w.data.shape == (N, K // 32, 32 * bits // 8)
    np.testing.assert_array_equal(w.dequantize(), ref)
    assert (w.mins is not None) == (qtype == "Q4_1")


def test_other_types_are_requantized_with_the_error_reported() -> None:
    raw, ref = _gguf_quantized("Q5_0")
    for bits in (8, 4):
        w = pack_gguf(raw, "Q5_0", N, K, int_bits=bits)
        assert not w.exact and w.bits == bits and w.source_type == "Q5_0"
        err = np.abs(w.dequantize() - ref)
        assert err.max() == pytest.approx(w.max_abs_error, rel=1e-5)
        # Rounding to the nearest level: at most half a step of the block's scale.
        assert np.all(err.reshape(N, K // 32, 32) <= np.abs(w.scales)[..., None] * 0.5 + 1e-6)
        assert 0.0 < w.rel_rms_error < (0.02 if bits == 8 else 0.3)


def test_quantize_blocks_refuses_bad_shapes() -> None:
    with pytest.raises(UsageError):
        quantize_blocks(np.zeros((2, 64), np.float32), 3, "F32")
    with pytest.raises(InvalidModelFile):
        quantize_blocks(np.zeros((2, 40), np.float32), 8, "F32")
    raw, _ = _gguf_quantized("Q4_0")
    with pytest.raises(InvalidModelFile, match="bytes"):
        pack_gguf(raw[:, :-2], "Q4_0", N, K, int_bits=8)


def test_take_rows_and_concat_keep_the_values() -> None:
    raw, ref = _gguf_quantized("Q4_1")
    w = pack_gguf(raw, "Q4_1", N, K, int_bits=8)
    order = np.random.default_rng(1).permutation(N)
    np.testing.assert_array_equal(w.take_rows(order).dequantize(), ref[order])
    both = concat_rows([w, w.take_rows(order)])
    assert both.n == 2 * N
    np.testing.assert_array_equal(both.dequantize(), np.concatenate([ref, ref[order]]))
    q8 = pack_gguf(*_gguf_quantized("Q8_0")[:1], "Q8_0", N, K, int_bits=8)
    assert same_layout([w, w]) and not same_layout([w, q8])
    with pytest.raises(UsageError):
        concat_rows([w, q8])


def test_rope_unpermute_inverts_the_gguf_converter_permutation() -> None:
    n_head, head_dim = 3, 8
    rows = np.arange(n_head * head_dim)
    # llama.cpp's converter: view (n_head, 2, head_dim/2), swap the last two axes.
    gguf_rows = rows.reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)
    np.testing.assert_array_equal(gguf_rows[_rope_unpermute(n_head * head_dim, n_head)], rows)


def _run_linear(w: PackedWeight, x: np.ndarray, accuracy_level: int) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto

    from edgescale.quant.onnx_graph import GraphBuilder

    g = GraphBuilder("one_linear")
    a = g.input("x", TensorProto.FLOAT, ["b", "s", w.k])
    y = g.linear(a, w, "w", accuracy_level=accuracy_level, output="y")
    g.output("y", TensorProto.FLOAT, ["b", "s", w.n])
    model = g.model(producer="test", metadata={})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert y
    return np.asarray(sess.run(["y"], {"x": x})[0])


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_onnxruntime_reads_the_packing_as_the_gguf_weight(qtype: str) -> None:
    raw, ref = _gguf_quantized(qtype, seed=3)
    w = pack_gguf(raw, qtype, N, K, int_bits=8)
    x = np.random.default_rng(4).standard_normal((2, 3, K)).astype(np.float32)
    expected = x.astype(np.float64) @ ref.T.astype(np.float64)
    exact = _run_linear(w, x, accuracy_level=0)  # float activations: the dequantised matmul
    np.testing.assert_allclose(exact, expected, rtol=0, atol=2e-4 * np.abs(expected).max())
    fast = _run_linear(w, x, accuracy_level=4)  # int8 activations, as llama.cpp does
    assert np.abs(fast - expected).max() < 0.05 * np.abs(expected).max()
