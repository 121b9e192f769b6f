"""Bias correction (Nagel et al. 2019, "Data-Free Quantization"; AIMET's `bias_correction`).

Rounding a layer's weights to 8 bits, and clipping/rounding its input to the calibrated 8-bit range,
shifts the *mean* of each output channel: per channel the errors do not average out, and the shift
propagates. For a layer y = W x + b the shift it causes itself is

    E[y_int8] - E[y_fp32] = W_q E[x_q] - W E[x]        (per output channel, x_q = input fake-quantized)

with E[.] the mean over the calibration samples. Subtracting it from the bias cancels it. Only each
layer's *own* shift is corrected: the shift it inherits from earlier layers disappears when those are
corrected, so measuring the whole quantized model's output shift and correcting every layer by it
would count upstream errors twice (measured: it made PP-OCR's outputs worse, cosine 0.995 -> 0.92).
The correction goes into the float model the quantizer reads (the bias is quantized to int32 with
it), so every INT8 format built from that model carries it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session


def fake_quant(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 asymmetric quantize-dequantize of `x` with range [lo, hi] widened to contain 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return x
    s = (hi - lo) / 255.0
    zp = np.round(-lo / s)
    return (np.clip(np.round(x / s) + zp, 0, 255) - zp) * s


def weight_q(w: np.ndarray, axis: int, qmax: int = 127) -> np.ndarray:
    """Symmetric per-channel (along `axis`) int8 quantize-dequantize of `w`, as ORT stores weights."""
    red = tuple(a for a in range(w.ndim) if a != axis)
    s = np.abs(w).max(axis=red, keepdims=True) / qmax
    s = np.where(s > 0, s, 1.0)
    return np.clip(np.round(w / s), -qmax, qmax) * s


def layer_shift(n: onnx.NodeProto, w: np.ndarray, ex: np.ndarray, exq: np.ndarray, qmax: int) -> np.ndarray | None:
    """W_q E[x_q] - W E[x] per output channel of node `n` (Conv, Gemm, MatMul with constant weight `w`),
    from the per-input-channel means `ex` (float input) and `exq` (fake-quantized input)."""
    w = w.astype(np.float64)
    if n.op_type == "Conv":
        g = int(attr(n, "group", 1))
        cout, cin_g = w.shape[0], w.shape[1]
        if ex.size != cin_g * g:
            return None
        ch = (np.arange(cout)[:, None] // (cout // g)) * cin_g + np.arange(cin_g)[None, :]  # [cout, cin_g]
        ws, wqs = w.reshape(cout, cin_g, -1).sum(2), weight_q(w, 0, qmax).reshape(cout, cin_g, -1).sum(2)
        return (wqs * exq[ch]).sum(1) - (ws * ex[ch]).sum(1)
    if n.op_type in ("Gemm", "MatMul") and w.ndim == 2:
        if n.op_type == "Gemm" and (attr(n, "transA", 0) or attr(n, "alpha", 1.0) != 1.0):
            return None
        kn = w.T if n.op_type == "Gemm" and attr(n, "transB", 0) else w  # [K, N]
        axis = 1  # output channels
        wq = weight_q(kn, axis, qmax)
        if ex.size != kn.shape[0]:
            return None
        return exq @ wq - ex @ kn
    return None


def input_means(model: onnx.ModelProto, names: list[str], feeds: Sequence[Feed],
                ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tensor: (E[x], E[x_q])} per channel (axis 1; last axis for rank 2) over `feeds`."""
    s = session(with_outputs(model, names).SerializeToString())
    ins = [i.name for i in s.get_inputs()]
    acc: dict[str, list[np.ndarray]] = {t: [] for t in names}
    accq: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for f in feeds:
        vals = dict(zip([o.name for o in s.get_outputs()], s.run(None, {k: f[k] for k in ins})))
        for t in names:
            x = np.asarray(vals[t], np.float64)
            if x.ndim < 2:
                continue
            p = (np.moveaxis(x, 1, -1) if x.ndim > 2 else x).reshape(-1, x.shape[1] if x.ndim > 2 else x.shape[-1])
            acc[t].append(p.mean(0))
            accq[t].append((fake_quant(p, *ranges[t]) if t in ranges else p).mean(0))
    return {t: (np.mean(acc[t], 0), np.mean(accq[t], 0)) for t in names if acc[t]}


def correct_biases(model: onnx.ModelProto, feeds: Sequence[Feed], ranges: dict[str, tuple[float, float]],
                   qmax: int = 127, max_feeds: int = 8, skip: set[str] | None = None) -> tuple[onnx.ModelProto, int]:
    """(a copy of `model` with each layer's own quantization shift removed from its bias, layers changed).
    Gemm/Conv get a bias if they had none; MatMul is left alone (no bias input)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    c = Consts(g)
    todo = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or (skip and n.name in skip):
            continue
        w = c.get(n.input[1])
        if w is not None and w.dtype == np.float32 and c.get(n.input[0]) is None:
            todo.append((n, w))
    if not todo:
        return m, 0
    means = input_means(m, sorted({n.input[0] for n, _ in todo}), feeds[:max_feeds], ranges)
    done = 0
    for n, w in todo:
        if n.input[0] not in means:
            continue
        d = layer_shift(n, w, *means[n.input[0]], qmax)
        if d is None:
            continue
        has = len(n.input) > 2 and bool(n.input[2])
        b = c.get(n.input[2]) if has else np.zeros(d.shape, np.float32)
        if b is None or b.size != d.size:
            continue
        name = unique_name(g, (n.input[2] if has else n.name or "layer") + "_bc")
        g.initializer.append(numpy_helper.from_array((b.astype(np.float64).reshape(-1) - d).astype(np.float32), name))
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = name
        done += 1
    return m, done


def output_shift(float_model: onnx.ModelProto, quantized: onnx.ModelProto, names: list[str],
                 feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """{tensor: E[quantized] - E[float]} per channel: how far a quantized model's tensors drift in mean
    (for reports and tests)."""
    a = input_means(float_model, names, feeds, {})
    b = input_means(quantized, names, feeds, {})
    return {t: b[t][0] - a[t][0] for t in names if t in a and t in b}
