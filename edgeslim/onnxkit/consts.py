"""Constant tensors of a graph, wherever the exporter put them: initializers or `Constant` nodes.

Paddle and spox exports keep weights, BatchNorm statistics and scalars such as the `3` and `6` of a
decomposed hard-swish in `Constant` nodes; graph rewrites (BatchNorm folding, pattern fusion,
equalisation) must read them the same way as initializers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class Consts:
    """Read-only view of the main graph's constant tensors by name (initializers and Constant nodes)."""

    def __init__(self, g: onnx.GraphProto):
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def get(self, name: str) -> np.ndarray | None:
        """The value of tensor `name`, or None when it is not a constant."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.nodes.get(name)
        if n is None:
            return None
        for a in n.attribute:
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                return numpy_helper.to_array(a.t)
            if a.name == "value_float":
                return np.array(a.f, np.float32)
            if a.name == "value_floats":
                return np.array(list(a.floats), np.float32)
            if a.name == "value_int":
                return np.array(a.i, np.int64)
            if a.name == "value_ints":
                return np.array(list(a.ints), np.int64)
        return None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, else None."""
        v = self.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def producers(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in g.node for o in n.output if o}


def unique_name(g: onnx.GraphProto, base: str) -> str:
    """A tensor name not yet used in `g` (initializers, node outputs, inputs)."""
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
