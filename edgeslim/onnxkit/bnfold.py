"""Fold inference BatchNormalization into the Conv / ConvTranspose before it, whatever holds the weights.

Why here and not only ONNX Runtime's `ConvBNFusion`: ORT fuses only when every parameter is an
initializer. Paddle exports keep small BatchNorm vectors (8 channels) and many weights in `Constant`
nodes, so a BatchNorm survives ORT's optimiser, and static INT8 then quantizes the un-normalised conv
output on its own scale (an extra rounding step whose range the BatchNorm later stretches). Folding:

    y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
      = conv(x, W * s) + (b - mean) * s + beta,      s = gamma / sqrt(var + eps)   (per output channel)

The scale goes on axis 0 of a Conv weight [Cout, Cin/g, k...] and on axis 1 of a ConvTranspose weight
[Cin, Cout/g, k...] (group 1 only). New initializers get new names, so a weight shared with another
node is left intact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, producers, unique_name
from edgeslim.onnxkit.graph import consumers, remove_dead


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold, in place, every BatchNormalization that follows a Conv/ConvTranspose it alone reads.
    Returns how many were folded."""
    g = model.graph
    c = Consts(g)
    cons = consumers(g)
    prod = producers(g)
    graph_outputs = {o.name for o in g.output}
    folded, drop = 0, set()
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1 or len(bn.input) < 5:
            continue
        conv = prod.get(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(cons.get(bn.input[0], [])) != 1:
            continue
        if bn.input[0] in graph_outputs:
            continue
        w = c.get(conv.input[1]) if len(conv.input) > 1 else None
        params = [c.get(x) for x in bn.input[1:5]]
        if w is None or any(p is None for p in params) or w.dtype != np.float32:
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
        eps = float(attr(bn, "epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        if conv.op_type == "Conv":
            cout, axis = w.shape[0], 0
        else:
            if int(attr(conv, "group", 1)) != 1:
                continue
            cout, axis = w.shape[1], 1
        if s.size != cout:
            continue
        has_b = len(conv.input) > 2 and bool(conv.input[2])
        b = c.get(conv.input[2]) if has_b else np.zeros(cout, np.float32)
        if b is None:
            continue
        shape = [1] * w.ndim
        shape[axis] = cout
        w2 = (w.astype(np.float64) * s.reshape(shape)).astype(np.float32)
        b2 = ((np.asarray(b, np.float64).reshape(-1) - mean) * s + beta).astype(np.float32)
        wn = unique_name(g, conv.input[1] + "_bnfold")
        g.initializer.append(numpy_helper.from_array(w2, wn))
        bname = unique_name(g, (conv.input[2] if has_b else conv.name or "conv") + "_bnfold_b")
        g.initializer.append(numpy_helper.from_array(b2, bname))
        conv.input[1] = wn
        if has_b:
            conv.input[2] = bname
        else:
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bname
        conv.output[0] = bn.output[0]
        drop.add(id(bn))
        folded += 1
    if folded:
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
        remove_dead(model)
    return folded


AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`c` as a [channels] vector if it broadcasts against an NC... tensor of `rank` only along C (or is
    a scalar), else None."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(-1)[0]), np.float64)
    shape = list(c.shape)
    while len(shape) < rank:
        shape.insert(0, 1)
    if len(shape) != rank or shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return c.reshape(-1).astype(np.float64)


def _const_operand(n: onnx.NodeProto, t: str, c: Consts) -> tuple[np.ndarray, bool] | None:
    """(constant, constant-is-first) of a binary node reading `t` and a constant, else None."""
    if len(n.input) != 2 or list(n.input).count(t) != 1:
        return None
    k = 1 - list(n.input).index(t)
    v = c.get(n.input[k])
    return (v, k == 0) if v is not None and v.dtype == np.float32 else None


def fold_affine(model: onnx.ModelProto) -> int:
    """Fold, in place, per-channel constant Mul/Add/Sub/Div around convolutions into their weights:

    - after a Conv (and a group-1 ConvTranspose) that it alone reads: y = a * conv(x) + b is one conv;
    - before a Conv that alone reads it: conv(a * x) scales the weights' input channels (exact with any
      padding); conv(x + b) adds sum(W * b) to the bias, exact only without padding, so only then.

    PP-OCRv4's "learnable affine blocks" are scalar Mul/Add pairs beside every conv and activation
    (Mul(w, x) with the constant first, which ORT's Conv+Mul fusion does not match). Each fold removes
    one element-wise pass in FP32 and one quantize/dequantize point in INT8. Returns the folds made.
    """
    total = 0
    while True:
        k = _fold_affine_once(model)
        total += k
        if not k:
            return total


def _fold_affine_once(model: onnx.ModelProto) -> int:
    g = model.graph
    c = Consts(g)
    cons = consumers(g)
    prod = producers(g)
    outs = {o.name for o in g.output}
    for n in g.node:
        if n.op_type not in AFFINE_OPS or n.output[0] in outs:
            continue
        for t in n.input:
            p = prod.get(t)
            op = _const_operand(n, t, c)
            if op is None or p is None:
                continue
            if p.op_type in ("Conv", "ConvTranspose") and len(cons.get(t, [])) == 1 and t not in outs:
                if _fold_after(g, c, p, n, op):
                    _drop(model, n, p.output[0])
                    return 1
        # before a conv: n's output feeds exactly one Conv as its data input
        r = cons.get(n.output[0], [])
        if len(r) == 1 and r[0].op_type == "Conv" and r[0].input[0] == n.output[0] and n.op_type in ("Mul", "Add"):
            x = next((i for i in n.input if c.get(i) is None), None)
            op = _const_operand(n, x, c) if x is not None else None
            if op is not None and _fold_before(g, c, n, r[0], op):
                r[0].input[0] = x  # type: ignore[assignment]
                _drop(model, n, None)
                return 1
    return 0


def _drop(model: onnx.ModelProto, n: onnx.NodeProto, rename_to_output: str | None) -> None:
    """Remove `n`; with `rename_to_output`, that tensor takes the name of n's output."""
    g = model.graph
    keep = [x for x in g.node if x is not n]
    if rename_to_output is not None:
        for x in keep:
            x.output[:] = [n.output[0] if o == rename_to_output else o for o in x.output]
    del g.node[:]
    g.node.extend(keep)
    remove_dead(model)


def _conv_params(g: onnx.GraphProto, c: Consts, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    w = c.get(conv.input[1]) if len(conv.input) > 1 else None
    if w is None or w.dtype != np.float32:
        return None
    cout = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * int(attr(conv, "group", 1))
    has_b = len(conv.input) > 2 and bool(conv.input[2])
    b = c.get(conv.input[2]) if has_b else np.zeros(cout, np.float32)
    if b is None:
        return None
    return w.astype(np.float64), np.asarray(b, np.float64).reshape(-1)


def _set_conv(g: onnx.GraphProto, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> None:
    wn = unique_name(g, conv.input[1] + "_fold")
    bn = unique_name(g, (conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.input[1]) + "_fold_b")
    g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), wn),
                          numpy_helper.from_array(b.astype(np.float32), bn)])
    conv.input[1] = wn
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = bn


def _fold_after(g: onnx.GraphProto, c: Consts, conv: onnx.NodeProto, n: onnx.NodeProto,
                op: tuple[np.ndarray, bool]) -> bool:
    if conv.op_type == "ConvTranspose" and int(attr(conv, "group", 1)) != 1:
        return False
    wb = _conv_params(g, c, conv)
    if wb is None:
        return False
    w, b = wb
    axis = 0 if conv.op_type == "Conv" else 1
    v = _per_channel(op[0], w.shape[axis], w.ndim)
    if v is None or (n.op_type in ("Sub", "Div") and op[1]):  # const - x, const / x: not affine in x
        return False
    if n.op_type == "Div" and not np.all(v != 0):
        return False
    shape = [1] * w.ndim
    shape[axis] = len(v)
    if n.op_type == "Mul":
        w, b = w * v.reshape(shape), b * v
    elif n.op_type == "Div":
        w, b = w / v.reshape(shape), b / v
    elif n.op_type == "Add":
        b = b + v
    else:
        b = b - v
    _set_conv(g, conv, w, b)
    return True


def _fold_before(g: onnx.GraphProto, c: Consts, n: onnx.NodeProto, conv: onnx.NodeProto,
                 op: tuple[np.ndarray, bool]) -> bool:
    wb = _conv_params(g, c, conv)
    if wb is None:
        return False
    w, b = wb
    group = int(attr(conv, "group", 1))
    cin = w.shape[1] * group
    v = _per_channel(op[0], cin, w.ndim)
    if v is None:
        return False
    # input channel of every weight slice: w[o, j] reads channel (o // (cout / group)) * cin_g + j
    cout, cin_g = w.shape[0], w.shape[1]
    ch = (np.arange(cout)[:, None] // (cout // group)) * cin_g + np.arange(cin_g)[None, :]
    vv = v[ch].reshape(cout, cin_g, *([1] * (w.ndim - 2)))
    if n.op_type == "Mul":
        w = w * vv
    else:
        pads = attr(conv, "pads", None) or []
        auto = attr(conv, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if any(pads) or auto not in ("NOTSET", "VALID"):
            return False
        b = b + (w * vv).reshape(cout, -1).sum(1)
    _set_conv(g, conv, w, b)
    return True


def fold_into_convs(model: onnx.ModelProto) -> dict[str, int]:
    """BatchNorm and constant affine folding (both above) until nothing changes; counts per kind."""
    out = {"batchnorm": 0, "affine": 0}
    while True:
        a, b = fold_batchnorm(model), fold_affine(model)
        out["batchnorm"] += a
        out["affine"] += b
        if not a and not b:
            return out
