"""INT8 and FP16 candidates with ONNX Runtime's quantization tooling and onnxconverter-common.

Static INT8 uses u8 activations with s8 weights and `reduce_range` (fast and overflow-free on AVX2 CPUs
without VNNI), per-channel where the opset allows. Layers whose output SQNR (signal-to-quantization-noise
ratio, dB, of the dequantized activation vs the float model's) falls under a threshold fall back to float:
each round excludes, among those layers, the ones that lose the most SQNR themselves (inputs' SQNR minus
output's; at most 10% of the layers per round), then quantizes again.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeslim.onnxopt.graph import save
from edgeslim.onnxopt.inputs import Feed
from edgeslim.onnxopt.load import PER_CHANNEL_OPSET, _graphs, default_opset

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention"]


class _Reader:
    """CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[Feed]):
        self.feeds, self.i = feeds, 0

    def get_next(self) -> Feed | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


@contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger on every call; keep the command's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: exclusion lists and SQNR reports refer to nodes by name."""
    seen: set[str] = set()
    k = 0
    for g in _graphs(model.graph):
        for n in g.node:
            if not n.name or n.name in seen:
                while f"{n.op_type}_{k}" in seen:
                    k += 1
                n.name = f"{n.op_type}_{k}"
            seen.add(n.name)


def quantizable_ops(exclude_ops: set[str]) -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return sorted(set(QDQRegistry) - exclude_ops)


def static_int8(
    model: onnx.ModelProto, feeds: list[Feed], fmt: str, exclude_ops: set[str], exclude_nodes: set[str],
) -> onnx.ModelProto:
    """quantize_static in 'qdq' or 'qoperator' format; raises whatever the tooling raises."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    per_channel = default_opset(model) >= PER_CHANNEL_OPSET
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        save(model, src)
        with _quiet():
            quantize_static(
                str(src), str(dst), _Reader(feeds),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=quantizable_ops(exclude_ops), per_channel=per_channel, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(exclude_nodes), calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        return onnx.load(str(dst))


def _quantized_nodes(qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes of a QDQ model that read a DequantizeLinear output (the quantized layers)."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in qdq.graph.node if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def layer_sqnr(float_model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: list[Feed]) -> dict[str, float]:
    """SQNR (dB) of each quantized layer's output, QDQ model vs float model, over `feeds`."""
    from edgeslim.deploy.runtime import session

    produced = {o for n in float_model.graph.node for o in n.output}
    # compare what the next layer sees: the Q->DQ'd activation (the quantizer folds a following Relu/Clip
    # into that clipping range and renames quantized graph outputs to <name>_QuantizeLinear_Input)
    q_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    pairs: dict[str, tuple[str, str]] = {}  # node -> (float tensor, QDQ tensor)
    for n in _quantized_nodes(qdq):
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
        save(_with_outputs(float_model, fnames), sf)
        save(_with_outputs(qdq, qnames), sq)
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
        out[node] = 200.0 if err[t] == 0 else 10 * math.log10(max(sig[t], 1e-30) / err[t])
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
        res.worst_db = min(s.values()) if s else 200.0
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


def dynamic_int8(model: onnx.ModelProto, exclude_ops: set[str], exclude_nodes: set[str]) -> onnx.ModelProto | None:
    """Dynamic INT8 of MatMul/Gemm/LSTM/GRU/Attention (None if the model has none of them)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = [o for o in DYNAMIC_OPS if o not in exclude_ops]
    if not any(n.op_type in ops for n in model.graph.node):
        return None
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        save(model, src)
        with _quiet():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=False, reduce_range=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude_nodes))
        return onnx.load(str(dst))


def fp16(model: onnx.ModelProto, exclude_ops: set[str]) -> onnx.ModelProto:
    """Full FP16 (inputs/outputs kept FP32) with onnxconverter-common; needs the `onnxopt` extra."""
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise RuntimeError("onnxconverter-common is not installed (pip install 'edgeslim[onnxopt]')") from e
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | exclude_ops)
    with warnings.catch_warnings():  # one warning per clipped tiny weight; the fidelity check judges them
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
