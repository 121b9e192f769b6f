"""Activation ranges for static INT8, chosen per tensor among MinMax, percentile, entropy and MSE.

Why per tensor: one method for the whole model is a compromise. MinMax keeps rare large values but
spends the 256 levels on them (a PP-OCRv4 tensor with |x| <= 180 and 99.99% of values under 145 gets a
step of 1.3); percentile and MSE clip outliers to refine the step; entropy (KL divergence, TensorRT's
method) keeps the shape of the histogram. Which one is best depends on the tensor.

How: `collect` runs the float model once over the calibration feeds and keeps, per float tensor, its
exact min/max and a random subsample of positions (all channels of each sampled position). `choose_calibration`
computes the four candidate ranges from the first half of the feeds and scores each on the other half:
the quantization error (uint8, asymmetric, as ONNX Runtime applies it) per channel, weighted by the
squared weight norm of that channel in the consuming Conv/MatMul/Gemm (so an error on a channel the
next layer amplifies costs more). Scoring on held-out feeds keeps the choice honest: a range fitted to
the sampled values does not automatically win. Ranges are in the tensor's float units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeslim.onnxkit.consts import Consts
from edgeslim.onnxkit.graph import consumers, with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session

METHODS = ("minmax", "percentile", "entropy", "mse")
PERCENTILE = 99.99  # two-sided: 0.01% of values clipped at each end


@dataclass
class TensorStats:
    lo: float
    hi: float
    halves: list[list[np.ndarray]] = field(default_factory=lambda: [[], []])  # [positions, channels] samples

    def sample(self, half: int | None = None) -> np.ndarray:
        parts = self.halves[0] + self.halves[1] if half is None else self.halves[half]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Float tensors a static quantizer may quantize: main-graph node outputs and float graph inputs."""
    inits = {t.name for t in model.graph.initializer}
    vi = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)
          + list(model.graph.output)}
    names = [i.name for i in model.graph.input if i.name not in inits
             and i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    for n in model.graph.node:
        if n.op_type in ("Constant", "Shape", "Size"):
            continue
        names += [o for o in n.output if o and vi.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def _positions(x: np.ndarray) -> np.ndarray:
    """[positions, channels]: channel axis 1 for rank >= 3 (NCHW...), last axis for rank 2, else 1."""
    if x.ndim >= 3:
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    if x.ndim == 2:
        return x
    return x.reshape(-1, 1)


def collect(model: onnx.ModelProto, feeds: Sequence[Feed], names: list[str] | None = None, cap: int = 2048,
            seed: int = 0, chunk: int = 256) -> dict[str, TensorStats]:
    """Min/max and held-out samples of the float tensors `names` (default `float_tensors`) over `feeds`.
    Up to `cap` positions per tensor are kept in all, split evenly between the two halves of the feeds."""
    names = names if names is not None else float_tensors(model)
    rng = np.random.default_rng(seed)
    stats: dict[str, TensorStats] = {}
    per = max(1, cap // max(1, len(feeds)))
    for c0 in range(0, len(names), chunk):
        part = names[c0 : c0 + chunk]
        sess = session(with_outputs(model, part).SerializeToString())
        outs = [o.name for o in sess.get_outputs()]
        want = [o for o in outs if o in set(part)]
        for k, f in enumerate(feeds):
            vals = dict(zip(outs, sess.run(None, f)))
            half = 0 if k < max(1, len(feeds) // 2) else 1
            for t in want:
                x = np.asarray(vals[t])
                if x.dtype != np.float32 or x.size == 0 or not np.isfinite(x).all():
                    continue
                s = stats.setdefault(t, TensorStats(float(x.min()), float(x.max())))
                s.lo, s.hi = min(s.lo, float(x.min())), max(s.hi, float(x.max()))
                p = _positions(x)
                idx = rng.choice(len(p), size=min(per, len(p)), replace=False)
                s.halves[half].append(p[idx].astype(np.float32))
    return stats


def _entropy_threshold(a: np.ndarray, amax: float, levels: int, bins: int = 1024) -> float:
    """KL-divergence threshold on |x| (TensorRT's calibration): the clip value whose `levels`-level
    quantized histogram diverges least from the original."""
    if amax <= 0 or a.size == 0:
        return amax
    hist, edges = np.histogram(a, bins=bins, range=(0, amax))
    hist = hist.astype(np.float64)
    best, best_t = np.inf, amax
    for i in range(levels, bins + 1, 32):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        # merge into `levels` bins, then spread each merged count over its non-empty source bins
        idx = np.minimum((np.arange(i) * levels) // i, levels - 1)
        merged = np.bincount(idx, weights=hist[:i], minlength=levels)
        nonzero = np.bincount(idx, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(hist[:i] > 0, merged[idx] / np.maximum(nonzero[idx], 1), 0.0)
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-12)
        m = (ps > 0) & (qs > 0)
        kl = float(np.sum(ps[m] * np.log(ps[m] / qs[m]))) + (1e9 if np.any((ps > 0) & (qs == 0)) else 0.0)
        if kl < best:
            best, best_t = kl, float(edges[i])
    return best_t


def quant_error(x: np.ndarray, lo: float, hi: float, w: np.ndarray | None = None) -> float:
    """Mean squared uint8 quantization error of the samples `x` [positions, channels] with range
    [lo, hi] (widened to contain 0, as ONNX Runtime does), channels weighted by `w`."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return float(np.mean(x.astype(np.float64) ** 2))
    s = (hi - lo) / 255.0
    zp = np.round(-lo / s)
    q = (np.clip(np.round(x / s) + zp, 0, 255) - zp) * s
    e = ((x.astype(np.float64) - q) ** 2).mean(axis=0)
    return float(np.average(e, weights=w) if w is not None and w.shape == e.shape and w.sum() > 0 else e.mean())


def method_range(x: np.ndarray, lo: float, hi: float, method: str, w: np.ndarray | None = None) -> tuple[float, float]:
    """The range `method` picks for the samples `x` of a tensor whose exact extent is [lo, hi]."""
    if method == "minmax" or x.size == 0:
        return lo, hi
    if method == "percentile":
        a, b = np.percentile(x, [100 - PERCENTILE, PERCENTILE])
        return min(float(a), 0.0) if lo < 0 else lo, float(b) if hi > 0 else hi
    if method == "entropy":
        t = _entropy_threshold(np.abs(x).ravel(), max(abs(lo), abs(hi)), 128 if lo < 0 else 256)
        return max(lo, -t), min(hi, t)
    if method == "mse":
        best = (np.inf, lo, hi)
        for f in np.linspace(0.25, 1.0, 16):
            e = quant_error(x, lo * f, hi * f, w)
            if e < best[0]:
                best = (e, lo * f, hi * f)
        return best[1], best[2]
    raise ValueError(method)


def channel_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Tensor -> squared norm of each input channel's weights in its consumer (Conv: axis 1 of W per
    group; MatMul with constant B: rows of B; Gemm: rows of B or of B^T), normalised to mean 1."""
    c = Consts(model.graph)
    out: dict[str, np.ndarray] = {}
    for t, readers in consumers(model.graph).items():
        acc = None
        for n in readers:
            w = c.get(n.input[1]) if len(n.input) > 1 and n.input[0] == t else None
            if w is None or w.dtype != np.float32:
                acc = None
                break
            if n.op_type == "Conv":
                g = next((a.i for a in n.attribute if a.name == "group"), 1)  # input channel = group * Cin/g + j
                v = (w.astype(np.float64) ** 2).reshape(g, w.shape[0] // g, w.shape[1], -1).sum(axis=(1, 3)).reshape(-1)
            elif n.op_type == "MatMul" and w.ndim == 2:
                v = (w.astype(np.float64) ** 2).sum(1)
            elif n.op_type == "Gemm" and w.ndim == 2:
                tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
                v = (w.astype(np.float64) ** 2).sum(0 if tb else 1)
            else:
                acc = None
                break
            acc = v if acc is None else (acc + v if acc.shape == v.shape else None)
            if acc is None:
                break
        if acc is not None and acc.mean() > 0:
            out[t] = acc / acc.mean()
    return out


def choose_calibration(stats: dict[str, TensorStats], weights: dict[str, np.ndarray] | None = None,
           methods: tuple[str, ...] = METHODS) -> tuple[dict[str, tuple[float, float]], dict[str, str],
                                                        dict[str, dict[str, tuple[float, float]]]]:
    """({tensor: (lo, hi)}, {tensor: method}, {method: {tensor: (lo, hi)}}): per tensor the method whose
    range, fitted on the first half of the feeds, has the lowest weighted quantization error on the
    second half; the final range is that method applied to all samples. The third value holds every
    method's range for every tensor (uniform choices, for comparison)."""
    ranges: dict[str, tuple[float, float]] = {}
    picked: dict[str, str] = {}
    every: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in methods}
    for t, s in stats.items():
        w = (weights or {}).get(t)
        fit, test = s.sample(0), s.sample(1)
        if len(methods) == 1 or len(fit) == 0 or len(test) == 0:
            m = methods[0]
        else:
            flo, fhi = float(min(fit.min(), 0)), float(max(fit.max(), 0))
            errs = {m: quant_error(test, *method_range(fit, flo, fhi, m, w), w) for m in methods}
            m = min(methods, key=lambda k: (errs[k], methods.index(k)))
        allx = s.sample()
        for k in methods:
            every[k][t] = method_range(allx, s.lo, s.hi, k, w)
        ranges[t] = every[m][t]
        picked[t] = m
    return ranges, picked, every


def minmax(stats: dict[str, TensorStats]) -> dict[str, tuple[float, float]]:
    return {t: (s.lo, s.hi) for t, s in stats.items()}
