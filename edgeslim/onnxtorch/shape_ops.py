"""ONNX shape and layout ops on live tensors: Reshape (with the probe-learned rule that lets a pruned channel
count through), Shape, Gather, Slice, Concat, Split, Squeeze/Unsqueeze, Expand, Cast, ... (opsets 11-18)."""

from __future__ import annotations

import math
from typing import Any

import torch

from edgeslim.onnxtorch.opbase import Op, ints, op_axes, torch_dtype


def transpose_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    perm = op.a.get("perm", list(range(x.dim()))[::-1])
    return x.permute(*perm)


def shape_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    s = torch._shape_as_tensor(x) if torch.jit.is_tracing() else torch.tensor(x.shape, dtype=torch.int64)
    start, end = op.a.get("start", 0), op.a.get("end", None)
    return s[start:end]


def _by_rule(rule: list[tuple[str, int, int]], x: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_tracing():
        target = _const_target(rule, x.dim())
        if target is not None:  # exported as one Reshape with a constant target, not Shape/Gather/Concat arithmetic
            return _ConstReshape.apply(x, tuple(int(v) for v in x.reshape(_sizes(rule, x)).shape), target)
    return x.reshape(_sizes(rule, x))


def _sizes(rule: list[tuple[str, int, int]], x: torch.Tensor) -> list[int]:
    return [math.prod(x.shape[i:j]) if kind == "in" else i for kind, i, j in rule]


def _const_target(rule: list[tuple[str, int, int]], rank: int) -> tuple[int, ...] | None:
    """The rule as an ONNX Reshape target of constants (0: copy the input dim at that position, -1: the rest),
    or None when it needs more than one -1."""
    out: list[int] = []
    for k, (kind, i, j) in enumerate(rule):
        if kind == "const":
            out.append(i)
        elif j == i + 1 and i == k and k < rank:
            out.append(0)
        else:
            out.append(-1)
    return tuple(out) if out.count(-1) <= 1 else None


class _Reshape(torch.autograd.Function):
    """`x.reshape(sizes)` in eager runs and gradients (torch's reshape); subclasses say how the ONNX exporter
    writes it (`symbolic`, from the third argument)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], how: Any) -> torch.Tensor:
        ctx.in_shape = x.shape
        return x.reshape(sizes)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        return g.reshape(ctx.in_shape), None, None


class _ConstReshape(_Reshape):
    """Written as one Reshape(x, constant `target`) (0 and -1 as ONNX reads them)."""

    @staticmethod
    def symbolic(g: Any, x: Any, sizes: tuple[int, ...], target: tuple[int, ...]) -> Any:
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(list(target), dtype=torch.int64)))


class _TensorReshape(_Reshape):
    """Written as one Reshape(x, shape): the traced int64 `shape` read as ONNX reads it (0 = copy the input dim,
    -1), without the arithmetic torch would need for the zeros."""

    @staticmethod
    def symbolic(g: Any, x: Any, sizes: tuple[int, ...], shape: Any) -> Any:
        return g.op("Reshape", x, shape)


def _fits(target: list[int], x: torch.Tensor) -> bool:
    """Does the ONNX target (0 and -1 already resolved to the input's dims / a free dim) fit `x`'s size?"""
    known = math.prod(v for v in target if v != -1)
    return target.count(-1) <= 1 and known > 0 and (x.numel() % known == 0 if -1 in target else known == x.numel())


def reshape_op(op: Op, x: torch.Tensor, shape: torch.Tensor | list) -> torch.Tensor:
    """ONNX Reshape. A constant target follows the rule learned at the probe run (so pruned channels fit); a
    computed target is used as computed, unless it no longer fits (it carried a constant channel count that
    pruning changed): then the learned rule."""
    if op.rule is not None and not op.recording and op.const(1):
        return _by_rule(op.rule, x)
    target = ints(shape)
    if not op.a.get("allowzero", 0):
        target = [x.shape[k] if v == 0 and k < x.dim() else v for k, v in enumerate(target)]
    if op.rule is not None and not op.recording and not _fits(target, x):
        return _by_rule(op.rule, x)
    if torch.jit.is_tracing() and isinstance(shape, torch.Tensor) and not op.const(1):
        # the exported Reshape reads the live shape tensor as the source did (0 and -1 as ONNX reads them)
        if not op.a.get("allowzero", 0):
            return _TensorReshape.apply(x, tuple(int(v) for v in x.reshape(target).shape), shape)
        from torch.onnx import operators

        return operators.reshape_from_tensor_shape(x, shape)
    y = x.reshape(target)
    if op.recording:
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


def gather_op(op: Op, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    axis = op.a.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    y = torch.index_select(x, axis, idx.reshape(-1))
    return y.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def unsqueeze_op(op: Op, x: torch.Tensor, axes_t: torch.Tensor | None = None) -> torch.Tensor:
    axes = op_axes(op, axes_t) or []
    r = x.dim() + len(axes)
    for a in sorted(a + r if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return x


class _Squeeze(torch.autograd.Function):
    """`x.squeeze` of the given axes that the ONNX exporter writes as one Squeeze, not as the If on the dim's
    size that it writes for a dim it cannot prove to be 1 (the source graph said it is)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        ctx.in_shape = x.shape
        for a in sorted(axes, reverse=True):
            x = x.squeeze(a)
        return x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        return g.reshape(ctx.in_shape), None

    @staticmethod
    def symbolic(g: Any, x: Any, axes: tuple[int, ...]) -> Any:
        return g.op("Squeeze", x, g.op("Constant", value_t=torch.tensor(list(axes), dtype=torch.int64)))


def squeeze_op(op: Op, x: torch.Tensor, axes_t: torch.Tensor | None = None) -> torch.Tensor:
    axes = op_axes(op, axes_t)
    if axes is None:
        return x.squeeze()
    if torch.jit.is_tracing() and all(x.shape[a] == 1 for a in axes):
        return _Squeeze.apply(x, tuple(a + x.dim() if a < 0 else a for a in axes))
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def concat_op(op: Op, *xs: torch.Tensor) -> torch.Tensor:
    xs2 = [x for x in xs if x is not None and (x.numel() > 0 or x.dim() > 1)]
    dtype = xs2[0].dtype
    # no .to() when the dtype already matches: the tracer records it as a Cast node all the same
    return torch.cat([x if x.dtype == dtype else x.to(dtype) for x in xs2], dim=op.a["axis"])


def slice_op(op: Op, x: torch.Tensor, starts: Any = None, ends: Any = None, axes_t: Any = None,
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


def cast_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    t = torch_dtype(op.a["to"])
    return x if x.dtype == t else x.to(t)  # a no-op Cast is not traced into the export


def constant_of_shape_op(op: Op, shape: torch.Tensor) -> torch.Tensor:
    v = op.a.get("value", torch.zeros(1, dtype=torch.float32))
    return torch.full(ints(shape), v.reshape(-1)[0].item(), dtype=v.dtype)


def split_op(op: Op, x: torch.Tensor, split_t: Any = None) -> tuple[torch.Tensor, ...]:
    axis = op.a.get("axis", 0)
    parts = list(op.a["split"]) if "split" in op.a else ints(split_t) if split_t is not None else None
    if not parts:
        n = op.a.get("num_outputs", op.n_out)
        d = x.shape[axis]
        size = -(-d // n)
        return tuple(torch.split(x, size, dim=axis))
    return tuple(torch.split(x, parts, dim=axis))


def flatten_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    axis = op.a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1) if axis else x.reshape(1, -1)


def expand_op(op: Op, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    s = ints(shape)
    r = max(len(s), x.dim())
    s = [1] * (r - len(s)) + s
    xs = [1] * (r - x.dim()) + list(x.shape)
    return x.reshape(xs).expand([max(a, b) if a != 1 else b for a, b in zip(xs, s)])


def range_op(op: Op, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)
