"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization", as in Qualcomm's AIMET).

Two convolutions in a row, with nothing or a positively homogeneous activation between them
(ReLU, LeakyReLU: f(x / s) = f(x) / s for s > 0), compute the same function when output channel i of
the first is divided by s_i and input channel i of the second multiplied by s_i. Choosing
s_i = sqrt(r1_i / r2_i), with r1_i the largest |weight| of output channel i of the first conv and r2_i
the largest |weight| reading channel i in the second, makes both ranges sqrt(r1_i * r2_i): channels
whose weights were tiny next to their neighbours' (common after BatchNorm folding in depthwise-
separable nets) stop wasting the per-tensor quantization grid, and the activation between the convs
gets a more even range per channel. Float outputs stay the same up to rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers, remove_dead

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}


def _conv_w(c: Consts, n: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None] | None:
    if n.op_type != "Conv" or len(n.input) < 2:
        return None
    w = c.get(n.input[1])
    if w is None or w.dtype != np.float32:
        return None
    b = c.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    return w.astype(np.float64), (None if b is None else b.astype(np.float64).reshape(-1))


def pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto | None, onnx.NodeProto]]:
    """(conv1, activation or None, conv2) chains that can be equalised, in graph order."""
    g = model.graph
    c = Consts(g)
    cons = consumers(g)
    outs = {o.name for o in g.output}
    found = []
    for n in g.node:
        if _conv_w(c, n) is None or n.output[0] in outs:
            continue
        nxt = cons.get(n.output[0], [])
        act = None
        if len(nxt) == 1 and nxt[0].op_type in HOMOGENEOUS:
            if nxt[0].op_type == "PRelu" or nxt[0].output[0] in outs:
                continue
            act = nxt[0]
            nxt = cons.get(act.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or nxt[0].input[0] != (act or n).output[0]:
            continue
        w2 = _conv_w(c, nxt[0])
        w1 = _conv_w(c, n)
        if w2 is None or w1 is None:
            continue
        g2 = int(attr(nxt[0], "group", 1))
        cout1 = w1[0].shape[0]
        if int(attr(n, "group", 1)) not in (1, cout1) or (g2 != 1 and not (g2 == cout1 and w2[0].shape[1] == 1)):
            continue
        found.append((n, act, nxt[0]))
    return found


def equalize(model: onnx.ModelProto, iterations: int = 2) -> int:
    """Equalise every pair found by `pairs`, in place, `iterations` sweeps. Returns the pairs changed."""
    changed: set[str] = set()
    for _ in range(iterations):
        g = model.graph
        c = Consts(g)
        for n1, _act, n2 in pairs(model):
            w1, b1 = _conv_w(c, n1)  # type: ignore[misc]
            w2, b2 = _conv_w(c, n2)  # type: ignore[misc]
            depthwise2 = int(attr(n2, "group", 1)) != 1
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
            r2 = np.abs(w2).reshape(w2.shape[0], -1).max(1) if depthwise2 else \
                np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            s = np.clip(s, 1e-4, 1e4)
            if np.allclose(s, 1.0, rtol=1e-3):
                continue
            w1 = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            b1 = None if b1 is None else b1 / s
            if depthwise2:
                w2 = w2 * s.reshape(-1, *([1] * (w2.ndim - 1)))
            else:
                w2 = w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2)))
            _set(g, n1, 1, w1)
            if b1 is not None:
                _set(g, n1, 2, b1)
            _set(g, n2, 1, w2)
            c = Consts(g)
            changed.add(n1.name or n1.output[0])
    remove_dead(model)  # the replaced weights
    return len(changed)


def _set(g: onnx.GraphProto, n: onnx.NodeProto, k: int, v: np.ndarray) -> None:
    name = unique_name(g, n.input[k] + "_cle")
    g.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
    n.input[k] = name


def channel_range_spread(model: onnx.ModelProto) -> float:
    """Mean over convs of (largest / median) per-output-channel weight range: how uneven the channels
    are (1 = all alike). Used to check that equalisation evens them out."""
    c = Consts(model.graph)
    vals = []
    for n in model.graph.node:
        wb = _conv_w(c, n)
        if wb is None or wb[0].shape[0] < 2:
            continue
        r = np.abs(wb[0]).reshape(wb[0].shape[0], -1).max(1)
        if np.median(r) > 0:
            vals.append(float(r.max() / np.median(r)))
    return float(np.mean(vals)) if vals else 1.0
