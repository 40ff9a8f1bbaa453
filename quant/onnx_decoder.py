"""The ONNX graph of a decoder with a KV cache: llama and Gemma 3 architectures.

Inputs and outputs follow the decoder-with-past layout Optimum and
onnxruntime-genai write, so the same runtime code drives either::

    input_ids            int64   (batch, seq)
    attention_mask       int64   (batch, total)      1 for every valid past + new position
    position_ids         int64   (batch, seq)
    num_logits_to_keep   int64   ()                  optional (default 0 = all positions)
    past_key_values.N.key / .value   float32 (batch, n_kv_head, past, head_dim)
    -> logits            float32 (batch, seq or num_logits_to_keep, n_vocab)
    -> present.N.key / .value        float32 (batch, n_kv_head, max(total, past), head_dim)

Attention is ONNX Runtime's ``GroupQueryAttention`` (com.microsoft) with the
rotary embedding inside it (``do_rotary``, half-split layout: for llama the
converter undoes the row permutation llama.cpp's converter applied to
attn_q/attn_k; Gemma's rows are stored half-split already). The past and
present buffers may be one and the same (bound to the same memory with IO
binding): rows are right-padded, ``attention_mask.sum(1)`` is each row's valid
length after this step, and the op writes the new keys and values in place.
Norms are ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization``,
every weight matmul is ``MatMulNBits``.

Gemma 3 adds: the embedding scaled by sqrt(n_embd), RMS norms of each head's
query and key, norms after attention and after the MLP, GELU (tanh) gating, and
sliding-window attention (``local_window_size``) with its own rotary base on
all layers but every ``swa_period``-th.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgescale.quant.gguf_blocks import PackedWeight, concat_rows, same_layout
from edgescale.quant.onnx_graph import MS_DOMAIN, GraphBuilder

ARCHITECTURES = ("llama", "gemma3")


@dataclass(frozen=True)
class DecoderSpec:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_theta: float
    max_positions: int  # rows of the rotary cos/sin tables
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations (llama.cpp does the same)
    attn_scale: float = 0.0  # 0: 1 / sqrt(head_dim)
    embed_scale: float = 1.0
    sliding_window: int = 0  # 0: every layer attends to the whole past
    swa_period: int = 0  # with a window: every swa_period-th layer is global
    rope_theta_local: float = 10000.0  # rotary base of the sliding-window layers

    def is_local(self, layer: int) -> bool:
        return (
            self.sliding_window > 0 and self.swa_period > 0 and (layer + 1) % self.swa_period != 0
        )


class DecoderWeights(Protocol):
    """Where the exporter gets each weight from (converted lazily, one at a time)."""

    def embedding(self) -> PackedWeight: ...  # 8-bit (n_vocab, n_embd)

    def head(self) -> PackedWeight | None: ...  # None: tied to the embedding

    def norm(
        self, name: str, size: int
    ) -> npt.NDArray[np.float32]: ...  # "output_norm", "blk.N.attn_norm", ...

    def linear(
        self, layer: int, role: str
    ) -> PackedWeight: ...  # attn_q, attn_k, ... in half-split row order


def rope_tables(
    head_dim: int, theta: float, positions: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """cos/sin caches (positions, head_dim / 2) of the half-split rotary embedding."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float64) * 2.0 / head_dim))
    angles = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Decoder:
    """Builds one decoder graph; the architecture decides the layer body."""

    def __init__(self, spec: DecoderSpec, weights: DecoderWeights) -> None:
        from onnx import TensorProto

        if spec.arch not in ARCHITECTURES:
            raise ValueError(f"no graph for architecture {spec.arch!r}")
        self.spec, self.w = spec, weights
        self.g = g = GraphBuilder(f"edgescale_{spec.arch}_decoder")
        fl, i64 = TensorProto.FLOAT, TensorProto.INT64
        self.ids = g.input("input_ids", i64, ["batch", "seq"])
        mask = g.input("attention_mask", i64, ["batch", "total"])
        self.pos = g.input("position_ids", i64, ["batch", "seq"])
        self.n_keep = g.input("num_logits_to_keep", i64, [])
        kv_shape: list[int | str] = ["batch", spec.n_head_kv, "past", spec.head_dim]
        self.pasts = [
            (
                g.input(f"past_key_values.{i}.key", fl, kv_shape),
                g.input(f"past_key_values.{i}.value", fl, kv_shape),
            )
            for i in range(spec.n_layer)
        ]
        g.output("logits", fl, ["batch", "kept", spec.n_vocab])
        g.default_input(self.n_keep, np.array(0, dtype=np.int64))
        # Per-row valid lengths and the longest total, as GroupQueryAttention wants them.
        summed = g.op("ReduceSum", mask, g.const([1]), keepdims=0)
        self.seqlens = g.op("Cast", g.op("Sub", summed, g.const([1])), to=TensorProto.INT32)
        self.total = g.op(
            "Cast", g.op("Gather", g.op("Shape", mask), g.const(np.array(1, dtype=np.int64)), axis=0),
            to=TensorProto.INT32
        )
        self.rope: dict[float, tuple[str, str]] = {}

    def rope_for(self, layer: int) -> tuple[str, str]:
        spec = self.spec
        theta = spec.rope_theta_local if spec.is_local(layer) else spec.rope_theta
        if theta not in self.rope:
            cos, sin = rope_tables(spec.head_dim, theta, spec.max_positions)
            self.rope[theta] = (
                self.g.initializer("rotary.cos_cache", cos),
                self.g.initializer("rotary.sin_cache", sin),
            )
        return self.rope[theta]

    def norm_weight(self, name: str, size: int | None = None) -> str:
        return self.g.initializer(name, self.w.norm(name, size or self.spec.n_embd))

    def rms(self, x: str, name: str, size: int | None = None) -> str:
        return self.g.node(
            "SimplifiedLayerNormalization",
            [x, self.norm_weight(name, size)],
            axis=-1,
            epsilon=float(self.spec.rms_eps),
            name=name,
        )[0]

    def skip_rms(self, residual: str, delta: str, name: str) -> tuple[str, str]:
        """(rms_norm(residual + delta) * w, residual + delta)."""
        g = self.g
        out, _, _, total = g.node(
            "SkipSimplifiedLayerNormalization",
            [residual, delta, self.norm_weight(name)],
            outputs=[g.fresh(f"{name}.out"), "", "", g.fresh(f"{name}.sum")],
            name=name,
            domain=MS_DOMAIN,
            epsilon=float(self.spec.rms_eps),
        )
        return out, total

    def linear(self, x: str, w: PackedWeight, name: str, **kw: object) -> str:
        return self.g.linear(x, w, name, accuracy_level=self.spec.accuracy_level, **kw)  # type: ignore[arg-type]

    def embed(self) -> tuple[str, PackedWeight, tuple[str, str, str | None]]:
        """Token embedding gathered from the 8-bit table (shared with a tied head)."""
        from onnx import TensorProto

        g, emb = self.g, self.w.embedding()
        if emb.bits != 8 or emb.mins is not None:
            raise ValueError("the embedding table must be packed as 8-bit blocks")
        b, s, _ = g.add_weight("model.embed_tokens", emb)
        # The gather's own copy of the scales carries the embedding scale (Gemma: sqrt(n_embd)).
        s2 = g.initializer(
            "model.embed_tokens.block_scales", (emb.scales * np.float32(self.spec.embed_scale))
        )
        q = g.op("Gather", b, self.ids, axis=0)
        scale = g.op("Unsqueeze", g.op("Gather", s2, self.ids, axis=0), g.const([-1]))
        x = g.op("Sub", g.op("Cast", q, to=TensorProto.FLOAT), g.const([128.0], np.float32))
        x = g.op("Mul", x, scale)
        return g.op("Reshape", x, g.const([0, 0, emb.k])), emb, (b, s, None)

    def qkv(self, x: str, layer: int) -> tuple[list[str], PackedWeight, PackedWeight, PackedWeight]:
        p = f"blk.{layer}"
        q, k, v = (self.w.linear(layer, r) for r in ("attn_q", "attn_k", "attn_v"))
        if same_layout([q, k, v]):
            return [self.linear(x, concat_rows([q, k, v]), f"{p}.attn_qkv"), "", ""], q, k, v
        return (
            [
                self.linear(x, w, f"{p}.{r}")
                for w, r in ((q, "attn_q"), (k, "attn_k"), (v, "attn_v"))
            ],
            q,
            k,
            v,
        )

    def attention(self, attn_in: list[str], layer: int) -> str:
        from onnx import TensorProto

        spec, g = self.spec, self.g
        cos, sin = self.rope_for(layer)
        past_k, past_v = self.pasts[layer]
        attrs: dict[str, Any] = {
            "num_heads": spec.n_head,
            "kv_num_heads": spec.n_head_kv,
            "do_rotary": 1,
            "rotary_interleaved": 0,
            "scale": float(spec.attn_scale or 1.0 / math.sqrt(spec.head_dim)),
        }
        if spec.is_local(layer):
            attrs["local_window_size"] = int(spec.sliding_window)
        out = g.node(
            "GroupQueryAttention",
            attn_in + [past_k, past_v, self.seqlens, self.total, cos, sin, self.pos],
            outputs=[
                g.fresh(f"blk.{layer}.attn"),
                f"present.{layer}.key",
                f"present.{layer}.value",
            ],
            name=f"blk.{layer}.gqa",
            domain=MS_DOMAIN,
            **attrs,
        )[0]
        for kind in ("key", "value"):
            g.output(
                f"present.{layer}.{kind}",
                TensorProto.FLOAT,
                ["batch", spec.n_head_kv, "total", spec.head_dim],
            )
        return out

    def gate_up(self, x: str, layer: int) -> tuple[str, str]:
        p = f"blk.{layer}"
        gw, uw = self.w.linear(layer, "ffn_gate"), self.w.linear(layer, "ffn_up")
        if same_layout([gw, uw]):
            both = self.linear(x, concat_rows([gw, uw]), f"{p}.ffn_gate_up")
            gate, up = self.g.node(
                "Split", [both, self.g.const([gw.n, uw.n])], 2, name=f"{p}.ffn_split", axis=-1
            )
            return gate, up
        return self.linear(x, gw, f"{p}.ffn_gate"), self.linear(x, uw, f"{p}.ffn_up")

    # -- llama ----------------------------------------------------------------
    def llama_layers(self, hidden: str) -> str:
        g, n = self.g, self.spec.n_layer
        x = self.rms(hidden, "blk.0.attn_norm")
        residual = hidden
        for i in range(n):
            p = f"blk.{i}"
            attn_in, *_ = self.qkv(x, i)
            o = self.linear(
                self.attention(attn_in, i), self.w.linear(i, "attn_output"), f"{p}.attn_output"
            )
            x, residual = self.skip_rms(residual, o, f"{p}.ffn_norm")
            gate, up = self.gate_up(x, i)
            act = g.op(
                "Mul", g.op("QuickGelu", gate, domain=MS_DOMAIN, alpha=1.0), up
            )  # SiLU(gate) * up
            down = self.linear(act, self.w.linear(i, "ffn_down"), f"{p}.ffn_down")
            x, residual = self.skip_rms(
                residual, down, f"blk.{i + 1}.attn_norm" if i + 1 < n else "output_norm"
            )
        return x

    # -- gemma 3 --------------------------------------------------------------
    def _head_norm(self, x: str, heads: int, name: str) -> str:
        """RMS norm over each head's head_dim values."""
        g, hd = self.g, self.spec.head_dim
        shaped = g.op("Reshape", x, g.const([0, 0, heads, hd]))
        normed = self.rms(shaped, name, hd)
        return g.op("Reshape", normed, g.const([0, 0, heads * hd]))

    def gemma3_layers(self, hidden: str) -> str:
        spec, g, n = self.spec, self.g, self.spec.n_layer
        x = self.rms(hidden, "blk.0.attn_norm")
        residual = hidden
        for i in range(n):
            p = f"blk.{i}"
            attn_in, q, k, v = self.qkv(x, i)
            if attn_in[1] == "":  # packed: split to normalise the query and key heads
                attn_in = g.node(
                    "Split",
                    [attn_in[0], g.const([q.n, k.n, v.n])],
                    3,
                    name=f"{p}.qkv_split",
                    axis=-1,
                )
            qn = self._head_norm(attn_in[0], spec.n_head, f"{p}.attn_q_norm")
            kn = self._head_norm(attn_in[1], spec.n_head_kv, f"{p}.attn_k_norm")
            o = self.linear(
                self.attention([qn, kn, attn_in[2]], i),
                self.w.linear(i, "attn_output"),
                f"{p}.attn_output",
            )
            o = self.rms(o, f"{p}.post_attention_norm")
            x, residual = self.skip_rms(residual, o, f"{p}.ffn_norm")
            gate, up = self.gate_up(x, i)
            act = g.op("Mul", g.op("Gelu", gate, approximate="tanh"), up)
            down = self.rms(
                self.linear(act, self.w.linear(i, "ffn_down"), f"{p}.ffn_down"),
                f"{p}.post_ffw_norm",
            )
            x, residual = self.skip_rms(
                residual, down, f"blk.{i + 1}.attn_norm" if i + 1 < n else "output_norm"
            )
        return x

    def build(self, metadata: dict[str, str]) -> object:
        g = self.g
        hidden, emb, emb_handles = self.embed()
        x = self.llama_layers(hidden) if self.spec.arch == "llama" else self.gemma3_layers(hidden)
        # Logits of the last n positions only (num_logits_to_keep; 0, the default, keeps all):
        # the runtime asks for 1 and skips the vocabulary projection of every prompt token.
        keep = g.op("Unsqueeze", g.op("Neg", self.n_keep), g.const([0]))
        x = g.op("Slice", x, keep, g.const([np.iinfo(np.int64).max]), g.const([1]))
        head = self.w.head()
        if head is None:
            self.linear(x, emb, "lm_head", shared=emb_handles, output="logits")
        else:
            self.linear(x, head, "lm_head", output="logits")
        return g.model(producer="edgescale", metadata=metadata)


def build_decoder(
    spec: DecoderSpec, weights: DecoderWeights, *, metadata: dict[str, str]
) -> Any:
    """The whole decoder as an ``onnx.ModelProto``."""
    return _Decoder(spec, weights).build(metadata)
