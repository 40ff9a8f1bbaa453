"""``edgescale convert MODEL.gguf OUT_DIR``: a GGUF decoder -> ONNX Runtime model dir.

Written with numpy and ``onnx`` only. Q4_0, Q4_1 and Q8_0 weights are carried
over bit for bit (see ``gguf_blocks``); other types are dequantised and
re-quantised to ``int_bits`` blocks, and the error of each is reported. The
output directory holds ``model.onnx`` (decoder-with-past layout, see
``onnx_decoder``), ``tokenizer.json`` and ``edgescale_onnx.json``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgescale.errors import InvalidModelFile, OutputExists, UsageError
from edgescale.models.info import model_info_from_header
from edgescale.quant.gguf_blocks import (
    PackedWeight,
    dequantize_gguf,
    pack_gguf,
    pack_q8_0,
    quantize_blocks,
)
from edgescale.quant.gguf_source import GGUFSource
from edgescale.quant.gguf_tokenizer import build_tokenizer
from edgescale.quant.onnx_decoder import DecoderSpec, build_decoder
from edgescale.runtime.onnx_config import CONFIG_NAME, MODEL_NAME, TOKENIZER_NAME, OnnxModelConfig

SUPPORTED_ARCHS = ("llama", "gemma3")
# Rows of the rotary tables by default (a model's own context if shorter); each row
# costs 4 * head_dim bytes per rotary base. convert(max_positions=...) raises it.
MAX_POSITIONS = 8192
GEMMA3_SWA_PERIOD = 6  # llama.cpp's pattern for Gemma 3: every 6th layer is global
# onnx's protobuf is limited to 2 GB; bigger models keep their weights in a side file.
EXTERNAL_DATA_BYTES = 1_500_000_000


@dataclass(frozen=True)
class TensorConversion:
    name: str
    source_type: str
    bits: int
    exact: bool
    max_abs_error: float  # vs. the dequantised GGUF tensor; 0.0 when carried over exactly
    rel_rms_error: float


@dataclass(frozen=True)
class ConvertReport:
    source: Path
    out_dir: Path
    architecture: str
    source_quant: str
    int_bits: int
    model_bytes: int
    seconds: float
    tensors: tuple[TensorConversion, ...]

    @property
    def exact_tensors(self) -> int:
        return sum(t.exact for t in self.tensors)

    @property
    def requantized_tensors(self) -> int:
        return sum(not t.exact for t in self.tensors)

    @property
    def max_abs_error(self) -> float:
        return max((t.max_abs_error for t in self.tensors), default=0.0)

    @property
    def max_rel_rms_error(self) -> float:
        return max((t.rel_rms_error for t in self.tensors), default=0.0)

    def summary(self) -> str:
        line = (
            f"{self.source.name} ({self.source_quant}) -> {self.out_dir} in {self.seconds:.1f}s, "
            f"{self.model_bytes / 1e6:.1f} MB; {self.exact_tensors} weights carried over exactly"
        )
        if self.requantized_tensors:
            line += (
                f", {self.requantized_tensors} re-quantised to int{self.int_bits} "
                f"(max abs error {self.max_abs_error:.3g}, worst relative rms error {self.max_rel_rms_error:.3g})"
            )
        return line


def _rope_unpermute(n_rows: int, n_head: int) -> npt.NDArray[np.intp]:
    """Row order that undoes llama.cpp's q/k permutation (interleaved -> half-split rotary)."""
    head_dim = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


class GGUFDecoderWeights:
    """Packs each weight on request and records how it was converted."""

    def __init__(self, src: GGUFSource, spec: DecoderSpec, int_bits: int) -> None:
        self.src = src
        self.spec = spec
        self.int_bits = int_bits
        self.records: list[TensorConversion] = []

    def _record(self, name: str, w: PackedWeight) -> PackedWeight:
        self.records.append(
            TensorConversion(name, w.source_type, w.bits, w.exact, w.max_abs_error, w.rel_rms_error)
        )
        return w

    def embedding(self) -> PackedWeight:
        t = self.src.tensor("token_embd.weight")
        if t.type_name == "Q8_0":
            w = pack_q8_0(np.asarray(t.raw), t.rows, t.cols)
        else:
            w = quantize_blocks(dequantize_gguf(t.raw, t.type_name, t.rows, t.cols), 8, t.type_name)
        return self._record(t.name, w)

    def head(self) -> PackedWeight | None:
        if not self.src.has("output.weight"):
            return None
        t = self.src.tensor("output.weight")
        return self._record(
            t.name,
            pack_gguf(np.asarray(t.raw), t.type_name, t.rows, t.cols, int_bits=self.int_bits),
        )

    def norm(self, name: str, size: int) -> npt.NDArray[np.float32]:
        v = self.src.vector(f"{name}.weight")
        if v.shape[0] != size:
            raise InvalidModelFile(
                f"{self.src.path}: {name} has {v.shape[0]} values, expected {size}"
            )
        return v

    def linear(self, layer: int, role: str) -> PackedWeight:
        t = self.src.tensor(f"blk.{layer}.{role}.weight")
        w = pack_gguf(np.asarray(t.raw), t.type_name, t.rows, t.cols, int_bits=self.int_bits)
        # llama.cpp's converter stores llama's q/k rows for its interleaved rotary; Gemma's
        # use the half-split rotary and are stored as they are.
        if self.spec.arch == "llama" and role == "attn_q":
            w = w.take_rows(_rope_unpermute(w.n, self.spec.n_head))
        elif self.spec.arch == "llama" and role == "attn_k":
            w = w.take_rows(_rope_unpermute(w.n, self.spec.n_head_kv))
        return self._record(t.name, w)


def _spec(src: GGUFSource, accuracy_level: int, max_positions: int | None) -> DecoderSpec:
    arch = src.meta("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise InvalidModelFile(
            f"{src.path}: architecture {arch!r} is not supported by the ONNX exporter ({', '.join(SUPPORTED_ARCHS)})"
        )
    info = model_info_from_header(src.header)
    if len(set(info.n_head_kv)) != 1:
        raise InvalidModelFile(f"{src.path}: per-layer KV head counts are not supported")
    if src.has("rope_freqs.weight") or src.arch("rope.scaling.type", "none") not in ("none", None):
        raise InvalidModelFile(
            f"{src.path}: scaled rotary embeddings are not supported by the ONNX exporter"
        )
    if src.has("blk.0.attn_q.bias"):
        raise InvalidModelFile(
            f"{src.path}: attention biases are not supported by the ONNX exporter"
        )
    rope_dim = int(src.arch("rope.dimension_count", info.head_dim_k))
    if rope_dim != info.head_dim_k or info.head_dim_k != info.head_dim_v:
        raise InvalidModelFile(
            f"{src.path}: partial rotary or unequal K/V head sizes are not supported"
        )
    if src.arch("final_logit_softcapping") or src.arch("attn_logit_softcapping"):
        raise InvalidModelFile(
            f"{src.path}: logit soft-capping is not supported by the ONNX exporter"
        )
    has_qk_norm = src.has("blk.0.attn_q_norm.weight")
    if has_qk_norm != (arch == "gemma3"):
        raise InvalidModelFile(f"{src.path}: unexpected q/k norm tensors for a {arch} model")
    positions = min(info.n_ctx_train, max_positions or MAX_POSITIONS)
    spec = DecoderSpec(
        arch=arch,
        n_layer=info.n_layer,
        n_embd=info.n_embd,
        n_head=info.n_head,
        n_head_kv=info.n_head_kv[0],
        head_dim=info.head_dim_k,
        n_ff=int(src.arch("feed_forward_length", 0)),
        n_vocab=info.n_vocab,
        rms_eps=float(src.arch("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(src.arch("rope.freq_base", 10000.0)),
        max_positions=positions,
        accuracy_level=accuracy_level,
    )
    if arch == "llama":
        return spec
    # Gemma 3, as llama.cpp runs it: the 27B model scales queries by its n_embd / n_head,
    # the others by the head size.
    scale_dim = info.n_embd / info.n_head if info.n_layer == 62 else info.head_dim_k
    return replace(
        spec,
        attn_scale=1.0 / math.sqrt(scale_dim),
        embed_scale=math.sqrt(info.n_embd),
        sliding_window=int(src.arch("attention.sliding_window", 0) or 0),
        swa_period=GEMMA3_SWA_PERIOD,
        rope_theta_local=float(src.arch("rope.freq_base_swa", 10000.0)),
    )


def convert(
    src: Path,
    out_dir: Path,
    *,
    int_bits: int = 8,
    accuracy_level: int = 4,
    max_positions: int | None = None,
    external_data: bool | None = None,
    overwrite: bool = False,
) -> ConvertReport:
    """Convert a llama or Gemma 3 GGUF into an ONNX Runtime model directory.

    ``int_bits`` (4 or 8) is the block width types other than Q4_0/Q4_1/Q8_0
    are re-quantised to. ``accuracy_level`` is MatMulNBits' activation
    precision: 4 (int8 activations, fastest on CPU; llama.cpp does the same) or
    0 (float activations). ``max_positions``: the longest sequence the model
    dir will run (default: the model's context, at most 8192). ``external_data``: keep the weights in
    ``model.onnx.data`` next to the graph (default: only above 1.5 GB, protobuf's
    limit being 2 GB).
    """
    t0 = time.perf_counter()
    if int_bits not in (4, 8):
        raise UsageError(f"int_bits must be 4 or 8, not {int_bits}")
    if accuracy_level not in (0, 1, 4):
        raise UsageError(f"accuracy_level must be 0, 1 or 4, not {accuracy_level}")
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExists(f"{out_dir} exists and is not empty")
    source = GGUFSource(src)
    spec = _spec(source, accuracy_level, max_positions)
    tokenizer, vocab = build_tokenizer(source)
    if vocab.n_vocab != spec.n_vocab:
        raise InvalidModelFile(
            f"{src}: vocabulary has {vocab.n_vocab} tokens, the model {spec.n_vocab}"
        )
    info = model_info_from_header(source.header)
    weights = GGUFDecoderWeights(source, spec, int_bits)
    metadata = {"source": src.name, "source_quant": info.quant, "producer": "edgescale convert"}
    model = build_decoder(spec, weights, metadata=metadata)

    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (CONFIG_NAME, MODEL_NAME, MODEL_NAME + ".data", TOKENIZER_NAME):
        (out_dir / stale).unlink(missing_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_BYTES if external_data is None else external_data
    tmp = out_dir / f".{MODEL_NAME}.{os.getpid()}.tmp"
    try:
        onnx.save_model(
            model, str(tmp), save_as_external_data=external, location=MODEL_NAME + ".data"
        )
        os.replace(tmp, out_dir / MODEL_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_NAME))
    records = tuple(weights.records)
    config = OnnxModelConfig(
        name=info.name,
        architecture=info.architecture,
        source_file=src.name,
        source_quant=info.quant,
        n_params=info.n_params,
        n_layer=spec.n_layer,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        head_dim=spec.head_dim,
        n_vocab=spec.n_vocab,
        n_ctx_train=info.n_ctx_train,
        max_positions=spec.max_positions,
        sliding_window=spec.sliding_window,
        kv_layout="gqa-shared",
        kv_dtype="f32",
        bos_token_id=vocab.bos_token_id,
        eos_token_id=vocab.eos_token_id,
        eog_token_ids=vocab.eog_token_ids,
        bos_token=vocab.bos_token,
        eos_token=vocab.eos_token,
        add_bos=vocab.add_bos,
        chat_template=info.chat_template,
        weights={
            "int_bits": int_bits,
            "accuracy_level": accuracy_level,
            "exact": sum(r.exact for r in records),
            "requantized": sum(not r.exact for r in records),
            "max_abs_error": max((r.max_abs_error for r in records), default=0.0),
        },
    )
    config.write(out_dir)  # written last: its presence marks a complete conversion
    size = sum(
        p.stat().st_size for p in out_dir.iterdir() if p.is_file() and p.name.startswith(MODEL_NAME)
    )
    return ConvertReport(
        source=src,
        out_dir=out_dir,
        architecture=info.architecture,
        source_quant=info.quant,
        int_bits=int_bits,
        model_bytes=size,
        seconds=time.perf_counter() - t0,
        tensors=records,
    )
