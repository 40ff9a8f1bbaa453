"""A small ONNX graph builder: nodes, initialisers and value names, nothing more.

``onnx`` is imported inside the methods so that importing this module costs
nothing; the exporter modules build graphs through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgescale.quant.gguf_blocks import BLOCK, PackedWeight

MS_DOMAIN = "com.microsoft"
OPSET = 21


class GraphBuilder:
    """Accumulates one graph; ``model()`` turns it into an ``onnx.ModelProto``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, bytes], str] = {}
        self._block_sums: dict[str, str] = {}

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    # -- declarations -------------------------------------------------------
    def input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        from onnx import helper

        self._names.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def default_input(self, name: str, value: npt.NDArray[Any]) -> None:
        """Give a declared input a default (an initialiser of the same name):
        feeding it becomes optional."""
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value, name))

    def output(self, name: str, elem: int, shape: Sequence[int | str]) -> None:
        from onnx import helper

        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def initializer(self, name: str, array: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(
        self, values: Sequence[int] | Sequence[float] | npt.NDArray[Any], dtype: Any = np.int64
    ) -> str:
        """A small constant initialiser, shared between uses of the same value."""
        arr = np.asarray(values, dtype=dtype)
        key = (f"{arr.dtype}{arr.shape}", arr.tobytes())
        found = self._consts.get(key)
        if found is None:
            found = self._consts[key] = self.initializer("const", arr)
        return found

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        n_outputs: int = 1,
        *,
        name: str | None = None,
        domain: str = "",
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        from onnx import helper

        base = name or op.lower()
        outs = (
            list(outputs)
            if outputs is not None
            else [self.fresh(f"{base}_out{i}") for i in range(n_outputs)]
        )
        for o in outs:
            if o:
                self._names.add(o)
        self.nodes.append(
            helper.make_node(op, list(inputs), outs, name=self.fresh(base), domain=domain, **attrs)
        )
        return outs

    def op(self, op: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, domain=domain, **attrs)[0]

    # -- composite pieces ---------------------------------------------------
    def block_sums(self, x: str, k: int) -> str:
        """(…, K) -> (…, K / 32): each block's sum of the input, as one small MatMul
        with a 0/1 matrix (shared per input)."""
        found = self._block_sums.get(x)
        if found is None:
            ones = np.zeros((k, k // BLOCK), np.float32)
            ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
            found = self.op("MatMul", x, self.const(ones, np.float32))
            self._block_sums[x] = found
        return found

    def add_weight(self, prefix: str, w: PackedWeight) -> tuple[str, str, str | None]:
        """Initialisers of a packed weight: (B, scales, offsets^T or None)."""
        b = self.initializer(f"{prefix}.qweight", w.data)
        s = self.initializer(f"{prefix}.scales", w.scales.reshape(-1))
        m = None
        if w.mins is not None:
            # Stored for q - 8 (MatMulNBits' default 4-bit zero point): d*q + m = d*(q-8) + (m + 8d).
            offsets = (w.mins + 8.0 * w.scales).astype(np.float32)
            m = self.initializer(f"{prefix}.offsets", np.ascontiguousarray(offsets.T))
        return b, s, m

    def linear(
        self,
        x: str,
        w: PackedWeight,
        prefix: str,
        *,
        accuracy_level: int,
        shared: tuple[str, str, str | None] | None = None,
        output: str | None = None,
    ) -> str:
        """y = x @ W^T through MatMulNBits (plus the Q4_1 offset term); ``output`` names y."""
        b, s, m = shared if shared is not None else self.add_weight(prefix, w)
        outs = [output] if output is not None and m is None else None
        y = self.node(
            "MatMulNBits",
            [x, b, s],
            name=f"{prefix}.matmul",
            domain=MS_DOMAIN,
            outputs=outs,
            K=w.k,
            N=w.n,
            bits=w.bits,
            block_size=BLOCK,
            accuracy_level=accuracy_level,
        )[0]
        if m is not None:
            corr = self.op("MatMul", self.block_sums(x, w.k), m)
            y = self.node("Add", [y, corr], outputs=[output] if output is not None else None)[0]
        return y

    def model(self, *, producer: str, metadata: dict[str, str]) -> Any:
        from onnx import helper

        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name=producer,
        )
        model.ir_version = 10
        helper.set_model_props(model, metadata)
        return model
