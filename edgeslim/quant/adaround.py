"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Rounding each weight to its nearest int8 level minimises the weight error, not the layer's output
error. AdaRound learns, per weight, whether to round down or up: w = s * (floor(w / s) + h(V)), with h a
rectified sigmoid pushed to 0 or 1 by a regulariser, so that conv(x_q, w) matches conv(x, w_fp32) on the
calibration inputs (x_q: the input as the INT8 model sees it, fake-quantized with its calibrated range).
The learned weights are written back into the float model *on the int8 grid*: the quantizer then finds
the same per-channel scale (the largest weight of each channel is kept as is) and stores exactly those
codes. Only the layers whose weight rounding costs the most output error are optimised (the costly
part), and only Conv (1-D/2-D) and constant-weight Gemm/MatMul layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session

ZETA, GAMMA = 1.1, -0.1


def _qmax(fmt: str) -> int:
    return 64 if "-rr" in fmt else 127  # ORT: symmetric int8 weights in [-127, 127], reduce_range [-64, 64]


def _layer_fn(n: onnx.NodeProto, w: torch.Tensor):
    """x, w -> layer output (no bias) for a Conv / Gemm / MatMul node, or None if unsupported."""
    if n.op_type == "Conv" and w.ndim in (3, 4):
        pads = list(attr(n, "pads", None) or [0] * (2 * (w.ndim - 2)))
        auto = attr(n, "auto_pad", b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
            return None
        nd = w.ndim - 2
        if pads[:nd] != pads[nd:]:
            return None
        stride = list(attr(n, "strides", None) or [1] * nd)
        dil = list(attr(n, "dilations", None) or [1] * nd)
        groups = int(attr(n, "group", 1))
        conv = F.conv2d if nd == 2 else F.conv1d
        return lambda x, ww: conv(x, ww, None, stride, pads[:nd], dil, groups)
    if n.op_type == "Gemm" and w.ndim == 2 and not attr(n, "transA", 0) and attr(n, "alpha", 1.0) == 1.0:
        tb = bool(attr(n, "transB", 0))
        return lambda x, ww: x @ (ww.T if tb else ww)
    if n.op_type == "MatMul" and w.ndim == 2:
        return lambda x, ww: x @ ww
    return None


def _channel_axis(n: onnx.NodeProto) -> int:
    """Axis of the weight that holds output channels (per-channel scales)."""
    if n.op_type == "Conv":
        return 0
    if n.op_type == "Gemm":
        return 0 if attr(n, "transB", 0) else 1
    return 1  # MatMul [K, N]


def _fake_quant(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return x
    s = (hi - lo) / 255.0
    zp = round(-lo / s)
    return (torch.clamp(torch.round(x / s) + zp, 0, 255) - zp) * s


def _round_error(fn, x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    with torch.no_grad():
        y = fn(x, w)
        return float(((fn(x, wq) - y) ** 2).sum() / max(float((y**2).sum()), 1e-12))


def adaround_weight(fn, x: torch.Tensor, xq: torch.Tensor, w: np.ndarray, axis: int, qmax: int, iters: int = 300,
                    lam: float = 0.01, seed: int = 0) -> np.ndarray:
    """Adaptively rounded copy of `w` (float32, on its per-channel int grid) for the layer `fn`."""
    torch.manual_seed(seed)
    wt = torch.tensor(w, dtype=torch.float32)
    red = tuple(a for a in range(w.ndim) if a != axis)
    s = wt.abs().amax(dim=red, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    base = torch.floor(wt / s)
    rest = wt / s - base
    fixed = (wt / s).abs() >= qmax - 1e-6  # channel maxima keep their value so the scale is unchanged
    r0 = torch.clamp(rest, 0.01, 0.99)
    v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (r0 - GAMMA) - 1))  # h(v) = rest at the start
    opt = torch.optim.Adam([v], lr=1e-2)
    with torch.no_grad():
        target = fn(x, wt)
        scale = float((target**2).mean()) or 1.0

    def h(v):
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    for i in range(iters):
        beta = 20 - (20 - 2) * i / max(1, iters - 1)
        wq = s * torch.clamp(base + h(v), -qmax, qmax)
        wq = torch.where(fixed, wt, wq)
        rec = ((fn(xq, wq) - target) ** 2).mean() / scale
        reg = (1 - (2 * h(v) - 1).abs().pow(beta)).mean() if i > iters // 5 else torch.zeros(())
        loss = rec + lam * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(base + (h(v) >= 0.5).float(), -qmax, qmax)
        out = torch.where(fixed, wt, s * q)
    return out.numpy().astype(np.float32)


def _crop(x: torch.Tensor, rng: np.random.Generator, side: int = 24) -> torch.Tensor:
    """A random spatial window of at most `side` (2-D) or side**2 (1-D) positions, same for the batch:
    the rounding is learned on a few thousand output positions, which is plenty and keeps it fast."""
    if x.ndim == 4 and (x.shape[2] > side or x.shape[3] > side):
        i = int(rng.integers(0, max(1, x.shape[2] - side + 1)))
        j = int(rng.integers(0, max(1, x.shape[3] - side + 1)))
        return x[:, :, i : i + side, j : j + side]
    if x.ndim == 3 and x.shape[2] > side * side:
        i = int(rng.integers(0, x.shape[2] - side * side + 1))
        return x[:, :, i : i + side * side]
    return x


def adaround(model: onnx.ModelProto, feeds: Sequence[Feed], fmt: str, ranges: dict[str, tuple[float, float]],
             layers: int = 4, max_feeds: int = 4, iters: int = 200, seed: int = 0) -> tuple[onnx.ModelProto, list[str]]:
    """(copy of `model` with AdaRound weights in the `layers` layers of largest relative output error
    from nearest rounding, names of those layers). Runs torch on one thread: these are small problems,
    and two OpenMP threads spin against each other on a shared machine (measured 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _adaround(model, feeds, fmt, ranges, layers, max_feeds, iters, seed)
    finally:
        torch.set_num_threads(threads)


def _adaround(model: onnx.ModelProto, feeds: Sequence[Feed], fmt: str, ranges: dict[str, tuple[float, float]],
              layers: int, max_feeds: int, iters: int, seed: int) -> tuple[onnx.ModelProto, list[str]]:
    g = model.graph
    c = Consts(g)
    cands = []
    for n in g.node:
        w = c.get(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.dtype != np.float32 or w.size < 16:
            continue
        if _layer_fn(n, torch.zeros(w.shape)) is not None and n.input[0] in ranges:
            cands.append(n)
    if not cands or layers <= 0:
        return model, []
    s = session(with_outputs(model, [n.input[0] for n in cands]).SerializeToString())
    names = [i.name for i in s.get_inputs()]
    outs = [o.name for o in s.get_outputs()]
    acts: dict[str, list[np.ndarray]] = {}
    for f in feeds[:max_feeds]:
        vals = dict(zip(outs, s.run(None, {k: f[k] for k in names})))
        for n in cands:
            acts.setdefault(n.input[0], []).append(vals[n.input[0]][:4])  # a few samples of a batch do
    qmax = _qmax(fmt)
    rng = np.random.default_rng(seed)
    scored = []
    for n in cands:
        w = c.get(n.input[1])
        assert w is not None
        x = _crop(torch.tensor(np.concatenate(acts[n.input[0]]), dtype=torch.float32), rng)
        wt = torch.tensor(w)
        fn = _layer_fn(n, wt)
        axis = _channel_axis(n)
        red = tuple(a for a in range(w.ndim) if a != axis)
        sc = wt.abs().amax(dim=red, keepdim=True) / qmax
        sc = torch.where(sc > 0, sc, torch.ones_like(sc))
        try:
            err = _round_error(fn, x, wt, torch.round(wt / sc) * sc)
        except RuntimeError:  # shapes the torch twin cannot run (e.g. MatMul on 3-D weights): skip the layer
            continue
        scored.append((err, n, x, axis))
    scored.sort(key=lambda t: -t[0])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    byname = {n.name: n for n in out.graph.node}
    done = []
    for _err, n, x, axis in scored[:layers]:
        w = c.get(n.input[1])
        assert w is not None
        fn = _layer_fn(n, torch.tensor(w))
        xq = _fake_quant(x, *ranges[n.input[0]])
        w2 = adaround_weight(fn, x, xq, w, axis, qmax, iters=iters, seed=seed)
        node = byname[n.name]
        name = unique_name(out.graph, node.input[1] + "_adaround")
        out.graph.initializer.append(numpy_helper.from_array(w2, name))
        node.input[1] = name
        done.append(n.name)
    return out, done
