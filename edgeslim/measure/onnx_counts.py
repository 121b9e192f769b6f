"""Per-layer operation and byte counts of an ONNX graph, by precision, at batch 1.

The energy estimator needs, for every compute layer: how many multiply-accumulates it does and in
which precision, how many weight bytes it reads (in their stored dtype) and how many activation bytes
it reads and writes. Counts come from the graph after shape inference (`onnxkit.shapes.infer_static`).

Precision of a Conv / MatMul / Gemm:
- `int8` when its data input and its weight both come from DequantizeLinear (a QDQ model, the
  runtime fuses them into an int8 kernel) or the op itself is integer (QLinearConv, ConvInteger,
  MatMulInteger, QLinearMatMul, QGemm);
- `fp16` when the tensors are float16;
- `fp32` otherwise, including weight-only quantization (int8 weights dequantized, float compute):
  then the weight bytes are counted in int8 but the MACs in fp32.
Elementwise and pooling ops are counted as `ops` (one operation per output element, in the
activation precision); they are small next to the MACs in conv nets.

Recurrent ops (GRU, LSTM, RNN and ORT's DynamicQuantizeLSTM) count, per step, direction and batch row,
gates x hidden x (input + hidden) MACs (GRU 3 gates, LSTM 4, RNN 1) and, per hidden unit, the elementwise
ops `RECURRENT` lists (gate nonlinearities, state updates). A GRU whose weights come from DequantizeLinear is
weight-only INT8 (ONNX Runtime has no integer GRU kernel): fp32 MACs, int8 weight bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.load import read_onnx
from edgeslim.onnxkit.shapes import infer_static

INT_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeLSTM"}
# recurrent op -> (weight blocks per step, elementwise ops per hidden unit and step: gate bias adds,
# sigmoid/tanh, the state update's products and sums)
RECURRENT = {"GRU": (3, 12), "LSTM": (4, 17), "DynamicQuantizeLSTM": (4, 17), "RNN": (1, 3)}
MAC_OPS = {"Conv", "MatMul", "Gemm", "ConvTranspose"} | INT_OPS | set(RECURRENT)
SKIP = {"Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
        "QuantizeLinear", "DequantizeLinear", "Cast"}


@dataclass
class LayerCount:
    name: str
    op: str
    precision: str  # int8 | fp16 | fp32
    macs: int  # multiply-accumulates at batch 1
    ops: int  # other arithmetic operations (elementwise, pooling), one per output element
    weight_bytes: int  # stored bytes of the weights/biases the layer reads
    act_in_bytes: int  # bytes of activation inputs read (at the deployed precision)
    act_out_bytes: int  # bytes of activation outputs written


@dataclass
class GraphCount:
    layers: list[LayerCount]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def macs_by_precision(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.precision] = out.get(layer.precision, 0) + layer.macs
        return out

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers)

    def as_dict(self) -> dict:
        return {"macs": self.macs, "macs_by_precision": self.macs_by_precision(),
                "weight_bytes": self.weight_bytes, "layers": [asdict(x) for x in self.layers]}


def _shape(info: dict, t: str) -> list[int] | None:
    vi = info.get(t)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
    return None if any(v < 0 for v in dims) else dims


def _itemsize(info: dict, t: str) -> int:
    vi = info.get(t)
    if vi is None:
        return 4
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).itemsize)


def count_onnx(model: str | Path | onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> GraphCount:
    """Per-layer counts of `model` at batch 1 (see the module docstring)."""
    m = infer_static(read_onnx(model), shapes)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    info = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    for t in g.initializer:
        info[t.name] = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    producer = {o: n for n in g.node for o in n.output}
    const = set(inits)
    for n in g.node:
        if n.op_type == "Constant" or (n.input and all((not t) or t in const for t in n.input)):
            const.update(n.output)
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        info[n.output[0]] = helper.make_tensor_value_info(n.output[0], a.t.data_type, list(a.t.dims))

    def stored(t: str) -> tuple[int, bool]:
        """(stored bytes of a constant input, whether it is decoded), following DQ, Cast, and Mul by a constant
        scale (weight-only int8 codes decoded by Cast -> Mul)."""
        seen = 0
        while t not in inits and t in producer and seen < 8:
            p = producer[t]
            if p.op_type in ("DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape") and p.input:
                t = p.input[0]
                seen += 1
            elif p.op_type == "Mul" and len(p.input) == 2 and p.input[1] in inits:  # int8 codes x scales
                t = p.input[0]
                seen += 1
            else:
                break
        if t in inits:
            return len(numpy_helper.to_array(inits[t]).tobytes()), seen > 0
        shp = _shape(info, t)
        return (int(np.prod(shp)) * _itemsize(info, t) if shp is not None else 0), seen > 0

    def from_dq(t: str) -> bool:
        return t in producer and producer[t].op_type == "DequantizeLinear"

    def deployed_bytes(t: str) -> int:
        """Bytes of an activation as the deployed kernel reads it (int8 behind a DequantizeLinear)."""
        shp = _shape(info, t)
        if shp is None:
            return 0
        src = producer[t].input[0] if from_dq(t) else t
        return int(np.prod(shp)) * _itemsize(info, src)

    layers: list[LayerCount] = []
    for i, n in enumerate(g.node):
        if n.op_type in SKIP or all(o in const for o in n.output if o):
            continue
        data = [t for t in n.input if t and t not in const]
        consts = [t for t in n.input if t and t in const]
        wbytes = 0
        w_dq = False
        for t in consts:
            b, dq = stored(t)
            wbytes += b
            w_dq |= dq
        out = n.output[0]
        oshape = _shape(info, out)
        out_elems = int(np.prod(oshape)) if oshape is not None else 0
        out_bytes = out_elems * _itemsize(info, out)
        consumers = [c for c in g.node if out in c.input]
        if consumers and all(c.op_type == "QuantizeLinear" for c in consumers):
            out_bytes = out_elems * _itemsize(info, consumers[0].output[0])
        macs = _macs(n, info, oshape) if n.op_type in MAC_OPS else 0
        ops = 0 if macs else out_elems
        if n.op_type in RECURRENT:
            macs, ops = _recurrent(n, info)
        if n.op_type in INT_OPS or (n.op_type in MAC_OPS and data and all(from_dq(t) for t in data) and w_dq):
            prec = "int8"
        elif _itemsize(info, out) == 2:
            prec = "fp16"
        else:
            prec = "fp32"
        layers.append(LayerCount(
            name=n.name or f"{n.op_type}_{i}", op=n.op_type, precision=prec, macs=macs,
            ops=ops, weight_bytes=wbytes,
            act_in_bytes=sum(deployed_bytes(t) for t in data), act_out_bytes=out_bytes,
        ))
    return GraphCount(layers)


def _attr(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _recurrent(n: onnx.NodeProto, info: dict) -> tuple[int, int]:
    """(MACs, elementwise ops) of a GRU/LSTM/RNN node at batch 1, from its input X (seq, batch, input)
    and its `hidden_size` (the output shape is not needed: ORT's contrib LSTM has none inferred)."""
    x = _shape(info, n.input[0])
    h = _attr(n, "hidden_size", 0)
    if x is None or len(x) != 3 or not h:
        return 0, 0
    gates, per_unit = RECURRENT[n.op_type]
    dirs = 2 if any(a.name == "direction" and a.s == b"bidirectional" for a in n.attribute) else 1
    rows = x[0] * x[1] * dirs  # steps x batch x directions
    return rows * gates * h * (x[2] + h), rows * per_unit * h


def _macs(n: onnx.NodeProto, info: dict, oshape: list[int] | None) -> int:
    if oshape is None:
        return 0
    out = int(np.prod(oshape))
    op = n.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w_name = n.input[3] if op == "QLinearConv" else n.input[1]
        w = _shape(info, w_name)
        if w is None:
            return 0
        if op == "ConvTranspose":  # each input element scatters into Cout/group * kernel outputs
            x = _shape(info, n.input[0])
            return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
        return out * int(np.prod(w[1:]))  # w: (Cout, Cin/group, k...)
    a_name = n.input[0]
    a = _shape(info, a_name)
    if a is None:
        return 0
    k = a[-1]
    if op == "Gemm" and _attr(n, "transA", 0):
        k = a[-2]
    return out * k
