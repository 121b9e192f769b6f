"""Shrink a finished QDQ model without changing what ONNX Runtime runs: bytes that ORT throws away at load.

Why: on a small model (ResNet-8, 77k weights) the QDQ bookkeeping is a large share of the file. The INT8
plan quantizes with the activations kept (`QDQKeepRemovableActivations`, so `quant.qdq_float` can put
layers back in float), which leaves `Q -> DQ -> Relu -> Q -> DQ` around every ReLU; ORT removes the ReLU
and the first pair when the session loads (the second QuantizeLinear's zero point already clips at 0),
except where the ReLU's output is read by two layers (a residual block's output read by the next
block's conv and shortcut): there ORT keeps a DequantizeLinear -> QuantizeLinear pair (two kernels).
Here the same rewrite is done on disk, and the all-zero zero points of constant DequantizeLinear
nodes (weights, biases; optional in ONNX, zero by default) are dropped, equal scalar scales and zero
points are stored once, and (ORT >= 1.20) int32 biases are stored as the float values ORT quantizes
back at load. Outputs are unchanged up to
the one rounding step removed (the ReLU's input is no longer quantized twice); figures in
docs/benchmarks.md, "INT8 that does not go backwards".

Each rewrite is kept only where ORT builds the same kernels from the rewritten file, or the same with some
removed (the op types of the session's graph at the `extended` level, `only_removes`): ORT's QGemm fusion,
for one, needs the zero points a Conv does not (measured: a 1024-wide MLP's int8 Gemms fell back to float
Gemm + DequantizeLinear, 0.16 -> 0.61 ms); and where a ReLU's output has two readers, ORT keeps a
DequantizeLinear -> QuantizeLinear pair where the ReLU was, which the rewritten file does not have.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.graph import consumers, remove_dead, rename_reads

_QMIN: dict[int, int] = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128}


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _clips_at_zero(q: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """True when QuantizeLinear `q` saturates every negative input to its lowest code (zero point =
    the type's minimum), i.e. it applies a ReLU by itself."""
    if len(q.input) < 3 or q.input[2] not in inits:
        return False
    zp_t = inits[q.input[2]]
    lo = _QMIN.get(int(zp_t.data_type))
    zp = numpy_helper.to_array(zp_t)
    return lo is not None and zp.size == 1 and int(zp.reshape(())) == lo


def drop_fused_relus(m: onnx.ModelProto) -> int:
    """`x -> Q1 -> DQ1 -> Relu -> Q2` with Q2 clipping at 0 becomes `x -> Q2` (ORT's own load-time fusion,
    done on disk). Returns how many ReLUs went."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output if o}
    readers = consumers(g)  # an If/Loop reading the ReLU's output inside its body is a reader too
    outputs = {o.name for o in g.output}
    k = 0
    for relu in list(g.node):
        if relu.op_type != "Relu" or relu.output[0] in outputs:
            continue
        rd = readers.get(relu.output[0], [])
        dq1 = prod.get(relu.input[0])
        q1 = prod.get(dq1.input[0]) if dq1 is not None and dq1.op_type == "DequantizeLinear" else None
        if q1 is None or q1.op_type != "QuantizeLinear" or not rd:
            continue
        if not all(r.op_type == "QuantizeLinear" and _clips_at_zero(r, inits) for r in rd):
            continue
        for q2 in rd:
            q2.input[0] = q1.input[0]
        k += 1
    if k:
        remove_dead(m)
    return k


def drop_zero_zero_points(m: onnx.ModelProto) -> int:
    """Remove the all-zero zero point of DequantizeLinear nodes that decode constants (int8 weights with
    symmetric scales, int32 biases): the input is optional and zero, of the constant's type, by default;
    ORT's fused convolutions get the same zero (measured: same kernels and speed on ResNet-8's convs).
    Not for Gemm/MatMul inputs: ORT's QGemm/MatMulInteger fusions need the zero point present (without it
    the layer runs in float). Returns how many were dropped."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    into_gemm = {i for n in g.node if n.op_type in ("Gemm", "MatMul") for i in n.input}
    k = 0
    for n in g.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[0] not in inits:
            continue
        if n.output[0] in into_gemm:
            continue
        zp = _const(inits, n.input[2])
        if zp is not None and inits[n.input[2]].data_type == inits[n.input[0]].data_type and not zp.any():
            del n.input[2]
            k += 1
    if k:
        remove_dead(m)
    return k


def share_scalars(m: onnx.ModelProto) -> int:
    """Scalar initializers (quantization scales and zero points) with the same type and value become one
    (after the ReLU fusion many activations share zero point 0), shapes included: a 1-element [1] tensor (a
    Slice's starts) and a 0-d scalar of the same value stay apart. Returns how many were merged away."""
    g = m.graph
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    ren: dict[str, str] = {}
    for t in g.initializer:
        if len(t.dims) > 1 or (len(t.dims) == 1 and t.dims[0] != 1):
            continue
        # the shape is part of the key: a [1] initializer (a Squeeze's axes) must not become a scalar
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in first:
            ren[t.name] = first[key]
        else:
            first[key] = t.name
    if not ren:
        return 0
    rename_reads(g, ren)  # inside If/Loop bodies too
    remove_dead(m)
    return len(ren)


def ort_quantizes_float_bias() -> bool:
    """ONNX Runtime >= 1.20 has the `BiasQuantization` transformer: a QDQ Conv/Gemm whose bias is float
    gets it quantized at load (scale = input scale x weight scale), so the file need not carry it."""
    import onnxruntime as ort

    major, minor = (int(x) for x in ort.__version__.split(".")[:2])
    return (major, minor) >= (1, 20)


def float_biases(m: onnx.ModelProto) -> int:
    """Replace the int32 bias + its scale vector + DequantizeLinear of each Conv/Gemm by the float bias it
    decodes to (4 bytes per channel instead of 8 and a node): ORT quantizes it back at load with the same
    scale (`ort_quantizes_float_bias`; measured with ORT 1.32 on ResNet-8: the same 22 kernels, the same
    speed, the same outputs). Returns how many biases changed."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output if o}
    readers = {t: len(rs) for t, rs in consumers(g).items()}
    k = 0
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
            continue
        dq = prod.get(n.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or readers.get(n.input[2], 0) != 1:
            continue
        q, scale = inits.get(dq.input[0]), inits.get(dq.input[1])
        if q is None or scale is None or q.data_type != onnx.TensorProto.INT32:
            continue
        zp = _const(inits, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        b = (numpy_helper.to_array(q).astype(np.float64) - (0 if zp is None else zp)) * numpy_helper.to_array(scale)
        name = dq.output[0] + "_float"
        g.initializer.append(numpy_helper.from_array(b.astype(np.float32), name))
        n.input[2] = name
        k += 1
    if k:
        remove_dead(m)
    return k


def _kernels(m: onnx.ModelProto) -> Counter[str] | None:
    """The op types (with domains) of the graph an ORT session builds for `m`; None if ORT cannot say."""
    from edgeslim.onnxkit.session import ort_optimize

    try:
        return Counter(f"{n.domain}:{n.op_type}" for n in ort_optimize(m, "extended").graph.node)
    except Exception:  # noqa: BLE001 - no proof of the same kernels: the rewrite is not made
        return None


def shrink(m: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of QDQ model `m` with the rewrites above, each kept only where ORT still builds the same
    kernels or a subset of them (`only_removes`); counts per rewrite (`<rewrite>_refused`: how many changes a rewrite would have made)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    ref = _kernels(out)
    steps = [("relus", drop_fused_relus), ("zero_points", drop_zero_zero_points),
             ("float_biases", float_biases if ort_quantizes_float_bias() else (lambda _m: 0)),
             ("scalars_shared", share_scalars)]
    counts: dict[str, int] = {}
    for name, fn in steps:
        trial = onnx.ModelProto()
        trial.CopyFrom(out)
        k = fn(trial)
        got = _kernels(trial) if k else ref
        if k and not only_removes(ref, got):
            counts[name], counts[f"{name}_refused"] = 0, k
            continue
        out, counts[name] = trial, k
        ref = got  # the next rewrite is judged against what this one left
    return out, counts


def only_removes(ref: Counter[str] | None, got: Counter[str] | None) -> bool:
    """True when ORT's kernels for the rewritten file are those of the original with some removed (no op
    type gained, none more often): e.g. a residual block's `QLinearAdd -> Q -> DQ -> Relu -> Q` read by
    two convs leaves a DequantizeLinear -> QuantizeLinear pair that ORT does not remove at load and the
    rewritten file does not have (measured on ResNet-8 / digits: 25 -> 19
    kernels, 0.0326 -> 0.0300 ms). A float Gemm appearing where a QGemm was is a gain: refused."""
    return ref is not None and got is not None and not (got - ref)
