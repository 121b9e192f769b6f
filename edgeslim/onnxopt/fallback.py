"""Static INT8 with SQNR fallback: the `int8-qdq` candidate of `edgeslim optimize`, and the INT8
QOperator and dynamic INT8 candidates built with the same settings (through `onnxkit.quant`).

Static INT8 uses u8 activations with s8 weights and `reduce_range` (fast and overflow-free on AVX2 CPUs
without VNNI), per-channel where the opset allows. Layers whose output SQNR (signal-to-quantization-noise
ratio, dB, of the dequantized activation vs the float model's) falls under a threshold fall back to float:
each round excludes, among those layers, the ones that lose the most SQNR themselves (inputs' SQNR minus
output's; at most 10% of the layers per round), then quantizes again.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import QDQ_OPS, save, with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.load import PER_CHANNEL_OPSET, default_opset
from edgeslim.onnxkit.session import session

U8S8_RR = "u8s8-rr"  # the integer format of every INT8 candidate (per-channel added where the opset allows)


def static_int8(
    model: onnx.ModelProto, feeds: list[Feed], fmt: str, exclude_ops: set[str], exclude_nodes: set[str],
) -> onnx.ModelProto:
    """Static INT8 in 'qdq' or 'qoperator' format; raises whatever the tooling raises."""
    f = oq.parse_format(U8S8_RR + ("-pc" if default_opset(model) >= PER_CHANNEL_OPSET else ""))
    return oq.quantize_static_model(model, feeds, f, qdq=fmt == "qdq", op_types=oq.qdq_ops(exclude_ops),
                                    exclude_nodes=sorted(exclude_nodes))


def dynamic_int8(model: onnx.ModelProto, exclude_ops: set[str], exclude_nodes: set[str]) -> onnx.ModelProto | None:
    """Dynamic INT8 of MatMul/Gemm/LSTM/GRU/Attention (None if the model has none of them)."""
    ops = [o for o in oq.DYNAMIC_OPS if o not in exclude_ops]
    if not any(n.op_type in ops for n in model.graph.node):
        return None
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        save(model, src)
        oq.quantize_dynamic(src, dst, op_types=ops, exclude_nodes=sorted(exclude_nodes))
        return onnx.load(str(dst))


def quantized_nodes(qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes of a QDQ model that read a DequantizeLinear output (the quantized layers)."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in qdq.graph.node if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)]


def layer_sqnr(float_model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: list[Feed]) -> dict[str, float]:
    """SQNR (dB) of each quantized layer's output, QDQ model vs float model, over `feeds`."""
    produced = {o for n in float_model.graph.node for o in n.output}
    # compare what the next layer sees: the Q->DQ'd activation (the quantizer folds a following Relu/Clip
    # into that clipping range and renames quantized graph outputs to <name>_QuantizeLinear_Input)
    q_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    pairs: dict[str, tuple[str, str]] = {}  # node -> (float tensor, QDQ tensor)
    for n in quantized_nodes(qdq):
        raw = n.output[0] if n.output else ""
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


@dataclass
class StaticResult:
    model: onnx.ModelProto
    excluded: list[str] = field(default_factory=list)   # nodes that fell back to float, in order
    worst_db: float = 0.0                               # lowest layer SQNR left, dB
    rounds: int = 0


def static_with_fallback(
    model: onnx.ModelProto, feeds: list[Feed], exclude_ops: set[str], exclude_nodes: set[str],
    sqnr_db: float, max_rounds: int = 4, probe: int = 8,
) -> StaticResult:
    """QDQ static INT8; layers under `sqnr_db` fall back to float, a few at a time, for up to `max_rounds`."""
    excl = set(exclude_nodes)
    res = StaticResult(static_int8(model, feeds, "qdq", exclude_ops, excl))
    producer = {o: n.name for n in model.graph.node for o in n.output}
    inputs_of = {n.name: list(n.input) for n in model.graph.node}
    for r in range(max_rounds + 1):
        s = layer_sqnr(model, res.model, feeds[:probe])
        res.worst_db = min(s.values()) if s else oq.SQNR_IDENTICAL_DB
        bad = {k: v for k, v in s.items() if v < sqnr_db}
        if not bad or r == max_rounds:
            break

        def upstream(k: str, s: dict[str, float] = s) -> float:
            """Lowest SQNR among the layer's tracked inputs (the threshold for graph inputs/constants)."""
            vals = [s[producer[i]] for i in inputs_of.get(k, []) if producer.get(i) in s]
            return min(vals) if vals else sqnr_db

        # rank by the SQNR each layer loses itself (its inputs' SQNR minus its output's): in a deep net
        # the cumulative SQNR sinks everywhere, but only a few layers cause most of the drop
        drop = {k: upstream(k) - v for k, v in bad.items()}
        cap = max(1, math.ceil(0.1 * len(s)))
        new = [k for k in sorted(drop, key=lambda k: -drop[k]) if drop[k] > 0][:cap]
        new = new or [min(bad, key=lambda k: bad[k])]
        res.excluded += new
        excl |= set(new)
        res.model = static_int8(model, feeds, "qdq", exclude_ops, excl)
        res.rounds = r + 1
    return res
