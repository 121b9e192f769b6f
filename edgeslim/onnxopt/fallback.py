"""Dynamic INT8 (the `int8-dyn` candidate) and per-layer output SQNR of a QDQ model (`--sqnr-db`).

Static INT8 itself, with its per-layer float fallback by output sensitivity and by speed, is
`edgeslim.quant.int8_plan`; this module keeps the two helpers `edgeslim optimize` still needs around it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import save, with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session
from edgeslim.quant.qdq_float import quantized_nodes


def dynamic_int8(model: onnx.ModelProto, exclude_ops: set[str], exclude_nodes: set[str]) -> onnx.ModelProto | None:
    """Dynamic INT8 of MatMul/Gemm/LSTM/GRU/Attention (None if the model has none of them)."""
    ops = [o for o in oq.DYNAMIC_OPS if o not in exclude_ops]
    if not any(n.op_type in ops for n in model.graph.node):
        return None
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        save(model, src)
        oq.quantize_dynamic_file(src, dst, op_types=ops, exclude_nodes=sorted(exclude_nodes))
        return onnx.load(str(dst))


def onnx_layer_sqnr(float_model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: Sequence[Feed]) -> dict[str, float]:
    """SQNR (dB) of each quantized layer's output, QDQ model vs float model, over `feeds`."""
    produced = {o for n in float_model.graph.node for o in n.output}
    # compare what the next layer sees: the Q->DQ'd activation (the quantizer folds a following Relu/Clip
    # into that clipping range and renames quantized graph outputs to <name>_QuantizeLinear_Input)
    q_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    pairs: dict[str, tuple[str, str]] = {}  # node -> (float tensor, QDQ tensor)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for x in qdq.graph.node:
        for i in x.input:
            readers.setdefault(i, []).append(x)
    for n in quantized_nodes(qdq):
        raw = n.output[0] if n.output else ""
        tq = dq_of.get(q_of.get(raw, ""), raw)
        r = readers.get(tq, [])
        if len(r) == 1 and r[0].op_type in ("Relu", "Clip"):  # kept activation: its Q/DQ clips to its range
            raw = r[0].output[0]
            tq = dq_of.get(q_of.get(raw, ""), raw)
        tf = raw.removesuffix("_QuantizeLinear_Input")
        if tf in produced:
            pairs[n.name] = (tf, tq)
    fnames = sorted({p[0] for p in pairs.values()})
    qnames = sorted({p[1] for p in pairs.values()})
    sig: dict[str, float] = dict.fromkeys(fnames, 0.0)
    err: dict[str, float] = dict.fromkeys(fnames, 0.0)
    with tempfile.TemporaryDirectory() as td:
        sf, sq = Path(td) / "f.onnx", Path(td) / "q.onnx"
        save(with_outputs(float_model, fnames), sf)
        save(with_outputs(qdq, qnames), sq)
        a, b = session(sf), session(sq)
        oa = [o.name for o in a.get_outputs()]
        ob = [o.name for o in b.get_outputs()]
        for f in feeds:
            ra = dict(zip(oa, a.run(None, f)))
            rb = dict(zip(ob, b.run(None, f)))
            for tf, tq in set(pairs.values()):
                x, y = np.asarray(ra[tf], np.float64), np.asarray(rb[tq], np.float64)
                if x.shape != y.shape:
                    continue
                sig[tf] += float((x * x).sum())
                err[tf] += float(((x - y) ** 2).sum())
    tensor = {k: v[0] for k, v in pairs.items()}
    out = {}
    for node, t in tensor.items():
        out[node] = oq.sqnr_from_sums(sig[t], err[t])
    return out
