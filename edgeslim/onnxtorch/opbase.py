"""The node module of weightless ONNX ops (`Op`: constant operands kept as buffers, or as python values where
they act as attributes) and the helpers the op functions share (dtypes, attributes, constant operands)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def torch_dtype(elem_type: int) -> torch.dtype:
    if elem_type not in _DTYPES:
        raise ValueError(f"ONNX element type {elem_type} has no torch equivalent here")
    return _DTYPES[elem_type]


def to_tensor(t: onnx.TensorProto) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(t)))


def constant_value(n: onnx.NodeProto) -> torch.Tensor:
    """The value of a `Constant` node (value, value_float(s), value_int(s))."""
    a = n.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return to_tensor(v)
    if a.name in ("value_float", "value_floats"):
        return torch.tensor(v, dtype=torch.float32)
    if a.name in ("value_int", "value_ints"):
        return torch.tensor(v, dtype=torch.int64)
    raise ValueError(f"Constant with attribute '{a.name}'")


def attrs_of(n: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in n.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = to_tensor(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


class Op(nn.Module):
    """One weightless ONNX node. Constant inputs are buffers; `forward` takes the others in node-input order."""

    def __init__(self, n: onnx.NodeProto, ins: list[torch.Tensor | None], opset: int, ranks: dict[str, int]) -> None:
        super().__init__()
        self.op_type = n.op_type
        self.opset = opset
        self.a = attrs_of(n)
        self.n_out = len(n.output)
        self.want = [bool(o) for o in n.output]
        self.in_rank = [ranks.get(i) for i in n.input]
        self.slots: list[str] = []  # per input: "d" dynamic, "c<i>" buffer, "p<i>" python list, "-" absent
        self.py: dict[str, list] = {}
        for i, (name, v) in enumerate(zip(n.input, ins)):
            if not name:
                self.slots.append("-")
            elif v is None:
                self.slots.append("d")
            elif i in ATTR_INPUTS.get(n.op_type, ()):  # shapes, axes, pads, bounds: python values, read for free
                self.py[f"p{i}"] = v.reshape(-1).tolist()
                self.slots.append(f"p{i}")
            else:
                self.register_buffer(f"c{i}", v.clone(), persistent=True)
                self.slots.append(f"c{i}")
        self.recording = False
        self.rule: list[tuple[str, int, int]] | None = None  # Reshape with a constant target: see reshape()

    def forward(self, *xs: torch.Tensor) -> Any:
        it = iter(xs)
        args = [None if s == "-" else next(it) if s == "d" else self.py[s] if s[0] == "p" else getattr(self, s)
                for s in self.slots]
        from edgeslim.onnxtorch.ops import FUNCS  # the table imports this module

        return FUNCS[self.op_type](self, *args)

    def const(self, i: int) -> bool:
        return i < len(self.slots) and self.slots[i][0] in "cp"


# inputs that act as attributes (shapes, axes, pads, bounds): when constant they are held as python lists
ATTR_INPUTS: dict[str, set[int]] = {
    "Reshape": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Split": {1},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceSumSquare": {1},
    "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Clip": {1, 2}, "Resize": {1, 2, 3}, "Upsample": {1},
}


def pylist(t: torch.Tensor | list | None) -> list:
    """A constant operand as a python list (already one when the op held it as an attribute-like input)."""
    return [] if t is None else t if isinstance(t, list) else t.reshape(-1).tolist()


def ints(t: torch.Tensor | list | None) -> list[int]:
    return [int(v) for v in pylist(t)]


def op_axes(op: Op, t: torch.Tensor | None, name: str = "axes") -> list[int] | None:
    """Axes from the attribute (older opsets) or the input."""
    if name in op.a:
        return list(op.a[name])
    return None if t is None else ints(t)
