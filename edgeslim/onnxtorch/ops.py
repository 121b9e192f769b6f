"""Weightless ONNX ops as torch functions: `Op` (one node, constant operands kept as buffers) and `FUNCS`, the table
op type -> function(op, *inputs). Semantics follow the ONNX operator spec for opsets 11-18 (attribute vs input
forms of axes/pads/splits by opset)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def torch_dtype(elem_type: int) -> torch.dtype:
    if elem_type not in _DTYPES:
        raise ValueError(f"ONNX element type {elem_type} has no torch equivalent here")
    return _DTYPES[elem_type]


def to_tensor(t: onnx.TensorProto) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(t)))


def constant_value(n: onnx.NodeProto) -> torch.Tensor:
    """The value of a `Constant` node (value, value_float(s), value_int(s))."""
    a = n.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return to_tensor(v)
    if a.name in ("value_float", "value_floats"):
        return torch.tensor(v, dtype=torch.float32)
    if a.name in ("value_int", "value_ints"):
        return torch.tensor(v, dtype=torch.int64)
    raise ValueError(f"Constant with attribute '{a.name}'")


def attrs_of(n: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in n.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = to_tensor(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


class Op(nn.Module):
    """One weightless ONNX node. Constant inputs are buffers; `forward` takes the others in node-input order."""

    def __init__(self, n: onnx.NodeProto, ins: list[torch.Tensor | None], opset: int, ranks: dict[str, int]) -> None:
        super().__init__()
        self.op_type = n.op_type
        self.opset = opset
        self.a = attrs_of(n)
        self.n_out = len(n.output)
        self.want = [bool(o) for o in n.output]
        self.in_rank = [ranks.get(i) for i in n.input]
        self.slots: list[str] = []  # per input: "d" dynamic, "c<i>" buffer, "p<i>" python list, "-" absent
        self.py: dict[str, list] = {}
        for i, (name, v) in enumerate(zip(n.input, ins)):
            if not name:
                self.slots.append("-")
            elif v is None:
                self.slots.append("d")
            elif i in ATTR_INPUTS.get(n.op_type, ()):  # shapes, axes, pads, bounds: python values, read for free
                self.py[f"p{i}"] = v.reshape(-1).tolist()
                self.slots.append(f"p{i}")
            else:
                self.register_buffer(f"c{i}", v.clone(), persistent=True)
                self.slots.append(f"c{i}")
        self.recording = False
        self.rule: list[tuple[str, int, int]] | None = None  # Reshape with a constant target: see reshape()

    def forward(self, *xs: torch.Tensor) -> Any:
        it = iter(xs)
        args = [None if s == "-" else next(it) if s == "d" else self.py[s] if s[0] == "p" else getattr(self, s)
                for s in self.slots]
        return FUNCS[self.op_type](self, *args)

    def const(self, i: int) -> bool:
        return i < len(self.slots) and self.slots[i][0] in "cp"


# inputs that act as attributes (shapes, axes, pads, bounds): when constant they are held as python lists
ATTR_INPUTS: dict[str, set[int]] = {
    "Reshape": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Split": {1},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceSumSquare": {1},
    "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Clip": {1, 2}, "Resize": {1, 2, 3}, "Upsample": {1},
}


def pylist(t: torch.Tensor | list | None) -> list:
    """A constant operand as a python list (already one when the op held it as an attribute-like input)."""
    return [] if t is None else t if isinstance(t, list) else t.reshape(-1).tolist()


def ints(t: torch.Tensor | list | None) -> list[int]:
    return [int(v) for v in pylist(t)]


def _axes(op: Op, t: torch.Tensor | None, name: str = "axes") -> list[int] | None:
    """Axes from the attribute (older opsets) or the input."""
    if name in op.a:
        return list(op.a[name])
    return None if t is None else ints(t)


def _binary(f: Callable) -> Callable:
    return lambda op, a, b: f(a, b)


def _div(op: Op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(op: Op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.pow(a, b).to(a.dtype)


def _clip(op: Op, x: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> torch.Tensor:
    lo_v = op.a.get("min", None if lo is None or not pylist(lo) else float(pylist(lo)[0]))
    hi_v = op.a.get("max", None if hi is None or not pylist(hi) else float(pylist(hi)[0]))
    return torch.clamp(x, lo_v, hi_v)


def _softmax_like(f: Callable) -> Callable:
    def run(op: Op, x: torch.Tensor) -> torch.Tensor:
        default = -1 if op.opset >= 13 else 1
        axis = op.a.get("axis", default)
        axis = axis + x.dim() if axis < 0 else axis
        if op.opset >= 13 or axis == x.dim() - 1:
            return f(x, dim=axis)
        shape = x.shape  # opset < 13: coerced to 2-D at `axis`
        return f(x.reshape(math.prod(shape[:axis]), -1), dim=1).reshape(shape)
    return run


def _transpose(op: Op, x: torch.Tensor) -> torch.Tensor:
    perm = op.a.get("perm", list(range(x.dim()))[::-1])
    return x.permute(*perm)


def _shape(op: Op, x: torch.Tensor) -> torch.Tensor:
    s = torch._shape_as_tensor(x) if torch.jit.is_tracing() else torch.tensor(x.shape, dtype=torch.int64)
    start, end = op.a.get("start", 0), op.a.get("end", None)
    return s[start:end]


def _reshape(op: Op, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    if op.rule is not None and not op.recording:
        out = []
        for kind, i, j in op.rule:
            out.append(math.prod(x.shape[i:j]) if kind == "in" else i)
        return x.reshape(out)
    if torch.jit.is_tracing() and isinstance(shape, torch.Tensor) and not op.const(1):
        # the exported Reshape reads the live shape tensor (0 and -1 as ONNX)
        from torch.onnx import operators

        if not op.a.get("allowzero", 0):  # ONNX 0 = copy that input dim, which torch does not know
            n, live = shape.shape[0], torch._shape_as_tensor(x)
            live = live[:n] if n <= x.dim() else torch.cat([live, shape[x.dim():]])
            shape = torch.where(shape == 0, live, shape)
        return operators.reshape_from_tensor_shape(x, shape)
    target = ints(shape)
    if not op.a.get("allowzero", 0):
        target = [x.shape[k] if v == 0 else v for k, v in enumerate(target)]
    y = x.reshape(target)
    if op.recording and op.const(1):
        op.rule = reshape_rule(list(x.shape), list(y.shape))
    return y


def reshape_rule(ins: list[int], outs: list[int]) -> list[tuple[str, int, int]] | None:
    """How each output dim of a reshape follows the input dims: ("in", i, j) = prod(in[i:j]) (merge or copy),
    ("const", v, 0) for a split part; the first split part becomes -1 so a pruned channel count still fits."""
    rule: list[tuple[str, int, int]] = []
    i = j = 0
    minus = False
    while j < len(outs):
        if i >= len(ins):
            if outs[j] != 1:
                return None
            rule.append(("const", 1, 0))
            j += 1
            continue
        i0, j0 = i, j
        pi, pj = ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(ins):
                pi *= ins[i]
                i += 1
            elif pj < pi and j < len(outs):
                pj *= outs[j]
                j += 1
            else:
                return None
        if j - j0 == 1:
            rule.append(("in", i0, i))
        else:
            for k in range(j0, j):
                v = -1 if not minus and k == j0 else outs[k]
                minus = minus or v == -1
                rule.append(("const", v, 0))
    if i < len(ins):  # trailing input dims (all 1 when the products matched) merge into the last output
        if math.prod(ins[i:]) != 1 or not rule:
            return None
        kind, a, b = rule[-1]
        rule[-1] = (kind, a, len(ins)) if kind == "in" else rule[-1]
    return rule


def _gather(op: Op, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = op.a.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    y = torch.index_select(x, axis, idx.reshape(-1))
    return y.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def _unsqueeze(op: Op, x: torch.Tensor, axes_t: torch.Tensor | None = None) -> torch.Tensor:
    axes = _axes(op, axes_t) or []
    r = x.dim() + len(axes)
    for a in sorted(a + r if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(op: Op, x: torch.Tensor, axes_t: torch.Tensor | None = None) -> torch.Tensor:
    axes = _axes(op, axes_t)
    if axes is None:
        return x.squeeze()
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _concat(op: Op, *xs: torch.Tensor) -> torch.Tensor:
    xs2 = [x for x in xs if x is not None and (x.numel() > 0 or x.dim() > 1)]
    dtype = xs2[0].dtype
    return torch.cat([x.to(dtype) for x in xs2], dim=op.a["axis"])


def _slice(op: Op, x: torch.Tensor, starts: Any = None, ends: Any = None, axes_t: Any = None,
           steps_t: Any = None) -> torch.Tensor:
    if "starts" in op.a:  # opset < 10
        st, en, ax, sp = op.a["starts"], op.a["ends"], op.a.get("axes"), None
    else:
        st, en, ax, sp = ints(starts), ints(ends), ints(axes_t) if axes_t is not None else None, ints(steps_t) or None
    ax = ax if ax is not None else list(range(len(st)))
    sp = sp or [1] * len(st)
    idx: list[Any] = [slice(None)] * x.dim()
    flips = []
    for s, e, a, p in zip(st, en, ax, sp):
        a = a + x.dim() if a < 0 else a
        d = x.shape[a]
        if p > 0:
            s = max(0, min(d, s + d if s < 0 else s))
            e = max(0, min(d, e + d if e < 0 else e))
            idx[a] = slice(s, e, p)
        else:  # negative step: explicit indices
            s = max(-1, min(d - 1, s + d if s < 0 else s))
            e = max(-1, min(d - 1, e + d if e < 0 else e))
            flips.append((a, torch.arange(s, e, p, dtype=torch.long, device=x.device)))
    y = x[tuple(idx)]
    for a, ix in flips:
        y = torch.index_select(y, a, ix)
    return y


def _cast(op: Op, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(op.a["to"]))


def _constant_of_shape(op: Op, shape: torch.Tensor) -> torch.Tensor:
    v = op.a.get("value", torch.zeros(1, dtype=torch.float32))
    return torch.full(ints(shape), v.reshape(-1)[0].item(), dtype=v.dtype)


def _pad(op: Op, x: torch.Tensor, pads_t: Any = None, value: Any = None, axes_t: Any = None) -> torch.Tensor:
    pads = list(op.a["pads"]) if "pads" in op.a else ints(pads_t)
    mode = op.a.get("mode", "constant")
    r = x.dim()
    axes = ints(axes_t) if axes_t is not None else list(range(r))
    axes = [a + r if a < 0 else a for a in axes]
    half = len(pads) // 2
    full = [0] * (2 * r)
    for k, a in enumerate(axes):
        full[a], full[a + r] = pads[k], pads[k + half]
    tp: list[int] = []
    for a in range(r - 1, -1, -1):
        tp += [full[a], full[a + r]]
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:  # torch pads the last dims only for reflect/replicate
        tp = tp[:-2]
    cval = float(op.a.get("value", 0.0)) if value is None or not pylist(value) else float(pylist(value)[0])
    if mode == "constant":
        return F.pad(x, tp, value=cval)
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    k = len(tp) // 2  # torch pads the last k dims of a tensor with 1 or 2 dims in front of them
    lead = x.shape[:-k]
    y = x.reshape(1, *x.shape) if x.dim() == k else x.reshape(-1, *x.shape[-k:]) if x.dim() > k + 1 else x
    y = F.pad(y, tp, mode=tmode)
    return y.reshape(*lead, *y.shape[-k:])


def _reduce(f: str) -> Callable:
    def run(op: Op, x: torch.Tensor, axes_t: Any = None) -> torch.Tensor:
        axes = _axes(op, axes_t)
        keep = bool(op.a.get("keepdims", 1))
        if not axes:
            if op.a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        if f == "mean":
            return x.mean(dim=axes, keepdim=keep)
        if f == "sum":
            return x.sum(dim=axes, keepdim=keep)
        if f == "sumsq":
            return (x * x).sum(dim=axes, keepdim=keep)
        y = x
        for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
            y = (y.amax if f == "max" else y.amin)(dim=a, keepdim=keep)
        return y
    return run


def _pool_pads(op: Op, nd: int) -> tuple[list[int], list[int] | None]:
    """(symmetric padding for torch, or an explicit F.pad list for asymmetric pads)."""
    pads = list(op.a.get("pads", [0] * 2 * nd))
    if op.a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError(f"auto_pad {op.a['auto_pad']} on a pool")
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return begin, None
    tp: list[int] = []
    for a in range(nd - 1, -1, -1):
        tp += [begin[a], end[a]]
    return [0] * nd, tp


def _maxpool(op: Op, x: torch.Tensor) -> Any:
    nd = x.dim() - 2
    k = op.a["kernel_shape"]
    pad, tp = _pool_pads(op, nd)
    if tp is not None:
        x = F.pad(x, tp, value=float("-inf"))
    f = [F.max_pool1d, F.max_pool2d, F.max_pool3d][nd - 1]
    return f(x, k, op.a.get("strides", [1] * nd), pad, op.a.get("dilations", [1] * nd),
             ceil_mode=bool(op.a.get("ceil_mode", 0)))


def _avgpool(op: Op, x: torch.Tensor) -> torch.Tensor:
    nd = x.dim() - 2
    pad, tp = _pool_pads(op, nd)
    include = bool(op.a.get("count_include_pad", 0))
    if tp is not None:
        if not include:
            raise ValueError("asymmetric pads with count_include_pad=0")
        x = F.pad(x, tp)
    f = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][nd - 1]
    return f(x, op.a["kernel_shape"], op.a.get("strides", [1] * nd), pad, ceil_mode=bool(op.a.get("ceil_mode", 0)),
             count_include_pad=include)


def _resize(op: Op, x: torch.Tensor, roi: Any = None, scales: Any = None, sizes: Any = None) -> torch.Tensor:
    if op.op_type == "Upsample":
        scales, sizes = roi, None
    mode = op.a.get("mode", "nearest")
    ctm = op.a.get("coordinate_transformation_mode", "half_pixel" if op.op_type == "Resize" else "asymmetric")
    nd = x.dim() - 2
    if sizes is not None and pylist(sizes):
        kw: dict[str, Any] = {"size": ints(sizes)[-nd:]}
    else:
        sc = [float(v) for v in pylist(scales)]
        if sc[:2] != [1.0, 1.0]:
            raise ValueError("Resize of the batch or channel dims")
        kw = {"scale_factor": sc[2:], "recompute_scale_factor": False}
    if mode == "nearest":
        nm = op.a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nm == "floor":
            return F.interpolate(x, mode="nearest", **kw)
        if ctm in ("half_pixel", "pytorch_half_pixel") and nm in ("round_prefer_ceil", "round_prefer_floor"):
            return F.interpolate(x, mode="nearest-exact", **kw)
        if ctm == "asymmetric":  # integer upscales: floor and round agree on half-pixel-free grids
            return F.interpolate(x, mode="nearest", **kw)
        raise ValueError(f"nearest resize with {ctm}/{nm}")
    tm = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd] if mode == "linear" else "bicubic" if mode == "cubic" else mode
    if ctm == "align_corners":
        return F.interpolate(x, mode=tm, align_corners=True, **kw)
    if ctm in ("half_pixel", "pytorch_half_pixel"):
        return F.interpolate(x, mode=tm, align_corners=False, **kw)
    raise ValueError(f"{mode} resize with {ctm}")


def _split(op: Op, x: torch.Tensor, split_t: Any = None) -> tuple[torch.Tensor, ...]:
    axis = op.a.get("axis", 0)
    parts = list(op.a["split"]) if "split" in op.a else ints(split_t) if split_t is not None else None
    if not parts:
        n = op.a.get("num_outputs", op.n_out)
        d = x.shape[axis]
        size = -(-d // n)
        return tuple(torch.split(x, size, dim=axis))
    return tuple(torch.split(x, parts, dim=axis))


def _gemm_dyn(op: Op, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    a = a.t() if op.a.get("transA", 0) else a
    b = b.t() if op.a.get("transB", 0) else b
    y = op.a.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + op.a.get("beta", 1.0) * c


def _flatten(op: Op, x: torch.Tensor) -> torch.Tensor:
    axis = op.a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1) if axis else x.reshape(1, -1)


def _dropout(op: Op, x: torch.Tensor, *_: Any) -> Any:
    return (x, torch.ones_like(x, dtype=torch.bool)) if op.n_out > 1 else x


def _expand(op: Op, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    s = ints(shape)
    r = max(len(s), x.dim())
    s = [1] * (r - len(s)) + s
    xs = [1] * (r - x.dim()) + list(x.shape)
    return x.reshape(xs).expand([max(a, b) if a != 1 else b for a, b in zip(xs, s)])


def _range(op: Op, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _hardsigmoid(op: Op, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(op.a.get("alpha", 0.2) * x + op.a.get("beta", 0.5), 0.0, 1.0)


def _layernorm(op: Op, x: torch.Tensor, w: Any, b: Any = None) -> torch.Tensor:
    axis = op.a.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    return F.layer_norm(x, x.shape[axis:], w, b, op.a.get("epsilon", 1e-5))


def _argmax(op: Op, x: torch.Tensor) -> torch.Tensor:
    f = torch.argmax if op.op_type == "ArgMax" else torch.argmin
    return f(x, dim=op.a.get("axis", 0), keepdim=bool(op.a.get("keepdims", 1)))


def _unary(f: Callable) -> Callable:
    return lambda op, x: f(x)


FUNCS: dict[str, Callable[..., Any]] = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div, "Pow": _pow,
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
    "Not": _unary(torch.logical_not), "Where": lambda op, c, a, b: torch.where(c, a, b),
    "Max": lambda op, *xs: _fold_n(torch.maximum, xs), "Min": lambda op, *xs: _fold_n(torch.minimum, xs),
    "Sum": lambda op, *xs: _fold_n(torch.add, xs), "Mean": lambda op, *xs: _fold_n(torch.add, xs) / len(xs),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Erf": _unary(torch.erf), "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil),
    "Reciprocal": _unary(torch.reciprocal), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos),
    "Round": _unary(torch.round), "Sign": _unary(torch.sign), "Softplus": _unary(F.softplus),
    "HardSwish": _unary(F.hardswish), "HardSigmoid": _hardsigmoid,
    "LeakyRelu": lambda op, x: F.leaky_relu(x, op.a.get("alpha", 0.01)),
    "Elu": lambda op, x: F.elu(x, op.a.get("alpha", 1.0)),
    "PRelu": lambda op, x, s: torch.where(x >= 0, x, x * s),
    "Clip": _clip, "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax),
    "Identity": _unary(lambda x: x), "Dropout": _dropout,
    "Transpose": _transpose, "Shape": _shape, "Size": lambda op, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Reshape": _reshape, "Flatten": _flatten, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": _concat, "Slice": _slice, "Split": _split, "Cast": _cast, "ConstantOfShape": _constant_of_shape,
    "Expand": _expand, "Tile": lambda op, x, r: x.repeat(ints(r)), "Range": _range,
    "Pad": _pad, "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "ReduceSumSquare": _reduce("sumsq"),
    "ArgMax": _argmax, "ArgMin": _argmax,
    "GlobalAveragePool": lambda op, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda op, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "MaxPool": _maxpool, "AveragePool": _avgpool, "Resize": _resize, "Upsample": _resize,
    "MatMul": lambda op, a, b: a @ b, "Gemm": _gemm_dyn, "LayerNormalization": _layernorm,
}


def _fold_n(f: Callable, xs: tuple) -> torch.Tensor:
    y = xs[0]
    for x in xs[1:]:
        y = f(y, x)
    return y
