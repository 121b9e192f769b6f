"""Write learned quantization parameters into an ONNX QDQ model, and report per-layer quantization error.

`write_qdq` takes the float ONNX export of a (BN-folded) model and, for each quantized Conv/Gemm,
replaces the float weight initializer by int8 codes + `DequantizeLinear` (per-channel scales, axis 0)
and puts `QuantizeLinear -> DequantizeLinear` (uint8, learned scale/zero point) on its input. The
result computes exactly what the PyTorch fake-quant model computes, and ONNX Runtime runs it.

`layer_report` lists, for each Conv/Gemm/MatMul whose weight comes from a `DequantizeLinear`: the bit
width, the weight-scale range, the input activation scale, and the SQNR (dB) of the layer's output
against the float model's same tensor on sample inputs (`onnxkit.quant.sqnr_db`, 2 decimals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.graph import insert_before, with_outputs
from edgeslim.onnxkit.quant import sqnr_db
from edgeslim.onnxkit.session import session

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class QLayer:
    """One layer's quantization, as the ONNX model stores it."""

    weight: str  # name of the float weight initializer in the float ONNX (e.g. "layer1.conv1.weight")
    codes: np.ndarray  # int8 weight codes, same shape as the float weight
    scale: np.ndarray  # float32 per output channel (shape (C_out,)) or scalar
    act_scale: float | None  # input activation scale; None: input left float
    act_zp: int = 0  # uint8 zero point
    bits: int = 8  # the bit width the codes use (codes are stored in int8 whatever the width)


def write_qdq(src: Path, dst: Path, layers: dict[str, QLayer]) -> list[str]:
    """Write the QDQ model; returns the names of layers found in `src` and quantized."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    by_weight = {n.input[1]: n for n in g.node if n.op_type in WEIGHT_OPS and len(n.input) > 1}
    before: dict[int, list] = {}  # id(node) -> Q/DQ nodes to insert before it
    drop, new_inits, done = set(), [], []
    shared: dict[tuple, str] = {}
    for lname, q in layers.items():
        node = by_weight.get(q.weight)
        if node is None or q.weight not in inits:
            continue
        shape = tuple(inits[q.weight].dims)
        codes, axis = q.codes, 0
        if shape != codes.shape:
            if codes.ndim == 2 and shape == codes.T.shape:  # MatMul or Gemm(transB=0) holds W^T
                codes, axis = np.ascontiguousarray(codes.T), 1
            else:
                raise EdgeslimError(f"{src}: weight {q.weight} has shape {shape}, codes {codes.shape}")
        w = q.weight
        scale = np.asarray(q.scale, np.float32)
        drop.add(w)
        new_inits += [
            numpy_helper.from_array(codes.astype(np.int8), f"{w}_q"),
            numpy_helper.from_array(scale, f"{w}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{w}_zp"),
        ]
        dq = helper.make_node("DequantizeLinear", [f"{w}_q", f"{w}_scale", f"{w}_zp"], [f"{w}_dq"],
                              name=f"{w}_DequantizeLinear")
        if scale.ndim == 1:
            dq.attribute.append(helper.make_attribute("axis", axis))
        nodes = [dq]
        node.input[1] = f"{w}_dq"
        if q.act_scale is not None:
            x, tag = node.input[0], f"{node.name or lname}_in"
            key = (x, float(q.act_scale), int(q.act_zp))
            if key in shared:  # another layer reads the same tensor with the same scale: one Q/DQ pair
                node.input[0] = shared[key]
            else:
                new_inits += [
                    numpy_helper.from_array(np.asarray(q.act_scale, np.float32), f"{tag}_scale"),
                    numpy_helper.from_array(np.asarray(q.act_zp, np.uint8), f"{tag}_zp"),
                ]
                nodes += [
                    helper.make_node("QuantizeLinear", [x, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"],
                                     name=f"{tag}_QuantizeLinear"),
                    helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"],
                                     [f"{tag}_dq"], name=f"{tag}_DequantizeLinear"),
                ]
                node.input[0] = shared[key] = f"{tag}_dq"
            if len(node.input) > 2 and node.input[2] in inits:  # int32 bias, scale s_in * s_w: lets ORT fuse
                b = node.input[2]
                bscale = (np.float32(q.act_scale) * scale).astype(np.float32)
                bq = np.round(numpy_helper.to_array(inits[b]).astype(np.float64) / bscale).astype(np.int32)
                drop.add(b)
                new_inits += [
                    numpy_helper.from_array(bq, f"{b}_q"),
                    numpy_helper.from_array(bscale, f"{b}_scale"),
                    numpy_helper.from_array(np.zeros(bscale.shape, np.int32), f"{b}_zp"),
                ]
                bdq = helper.make_node("DequantizeLinear", [f"{b}_q", f"{b}_scale", f"{b}_zp"], [f"{b}_dq"],
                                       name=f"{b}_DequantizeLinear")
                if bscale.ndim == 1:
                    bdq.attribute.append(helper.make_attribute("axis", 0))
                nodes.append(bdq)
                node.input[2] = f"{b}_dq"
        before[id(node)] = nodes
        done.append(lname)
    insert_before(g, before)
    keep = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    onnx.checker.check_model(model)
    write_bytes(dst, model.SerializeToString())
    return done


def _run_tensors(model: Path, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The tensors `names` of the ONNX file `model` on the single input `x`, each flattened and concatenated
    over the runs. A model with a fixed batch B (one sample at a time: B = 1) runs B samples per run, full
    batches only (fewer than B samples: repeated to B), so its tensors need not put samples on axis 0."""
    import onnx

    from edgeslim.onnxkit.quant import input_batch

    m = onnx.load(str(model))
    fixed = input_batch(m)
    uniq = list(dict.fromkeys(names))
    sess = session(with_outputs(m, uniq).SerializeToString())
    name = sess.get_inputs()[0].name
    x = x.astype(np.float32)
    if fixed is None:
        return {k: np.asarray(v).reshape(-1) for k, v in zip(uniq, sess.run(uniq, {name: x}))}
    if len(x) < fixed:
        x = np.resize(x, (fixed, *x.shape[1:]))
    runs = [sess.run(uniq, {name: x[i:i + fixed]}) for i in range(0, len(x) - fixed + 1, fixed)]
    return {k: np.concatenate([np.asarray(r[j]).reshape(-1) for r in runs]) for j, k in enumerate(uniq)}


def _after_qdq(q, out: str) -> str:
    """`out` after its QuantizeLinear -> DequantizeLinear pair, if it has one."""
    q_next = next((c for c in q.graph.node if c.op_type == "QuantizeLinear" and c.input[0] == out), None)
    if q_next is None:
        return out
    dq_next = next((c for c in q.graph.node if c.op_type == "DequantizeLinear" and c.input[0] == q_next.output[0]),
                   None)
    return dq_next.output[0] if dq_next is not None else out


def layer_report(
    float_onnx: Path, q_onnx: Path, x: np.ndarray, bits: dict[str, int] | None = None,
) -> list[dict]:
    """Per quantized layer: bits, weight-scale range, input scale, output SQNR (dB) vs the float model."""
    import onnx
    from onnx import numpy_helper

    q = onnx.load(str(q_onnx))
    inits = {t.name: t for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    fgraph = onnx.load(str(float_onnx)).graph
    fnames = {o for n in fgraph.node for o in n.output}
    frelu = {n.input[0]: n.output[0] for n in fgraph.node if n.op_type == "Relu"}  # fused on disk (qdq_shrink)
    rows = []
    for n in q.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        wdq = producer.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue
        codes = numpy_helper.to_array(inits[wdq.input[0]])
        scale = numpy_helper.to_array(inits[wdq.input[1]]) if wdq.input[1] in inits else np.array([np.nan])
        b = (bits or {}).get(wdq.input[0].removesuffix("_q").removesuffix("_quantized"))
        if b is None:
            b = 8 if codes.dtype.itemsize == 1 else 8 * codes.dtype.itemsize
        xdq = producer.get(n.input[0])
        act = None
        if xdq is not None and xdq.op_type == "DequantizeLinear" and xdq.input[1] in inits:
            act = float(numpy_helper.to_array(inits[xdq.input[1]]))
        out = n.output[0]  # compare what the next layer sees: after the output's Q/DQ (which may clip = ReLU)
        tensor = _after_qdq(q, out)
        readers = [c for c in q.graph.node if tensor in c.input]
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip"):
            # a ReLU/Clip kept in the graph: the Q/DQ before it already clips to its range, so compare after it
            out = readers[0].output[0]
            tensor = _after_qdq(q, out)
        elif out in frelu and tensor != out:  # the ReLU went into the output's quantize: compare after it
            out = frelu[out]
        rows.append({
            "layer": n.name or n.output[0], "op": n.op_type, "bits": int(b),
            "weight_dtype": str(codes.dtype), "weight_scale_min": float(np.min(scale)),
            "weight_scale_max": float(np.max(scale)), "input_scale": act, "tensor": tensor, "ref": out if out in fnames else tensor,
        })
    pairs = [(r["ref"], r["tensor"]) for r in rows if r["ref"] in fnames]
    ref: dict[str, np.ndarray] = {}
    got: dict[str, np.ndarray] = {}
    if pairs:
        ref = _run_tensors(float_onnx, x, [a for a, _ in pairs])
        got = _run_tensors(q_onnx, x, [b for _, b in pairs])
    for r in rows:
        a, b = r.pop("ref"), r.pop("tensor")
        r["sqnr_db"] = round(sqnr_db(ref[a], got[b]), 2) if a in ref else None
    return rows
