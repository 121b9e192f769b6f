"""Weightless ONNX ops as torch functions: `FUNCS`, the table op type -> function(op, *inputs) that `Op` (one
node) runs. Semantics follow the ONNX operator spec for opsets 11-18 (attribute vs input forms by opset)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from edgeslim.onnxtorch.opbase import (  # noqa: F401  (re-exported: the converter's names for them)
    ATTR_INPUTS,
    Op,
    attrs_of,
    constant_value,
    ints,
    op_axes,
    pylist,
    to_tensor,
    torch_dtype,
)
from edgeslim.onnxtorch.shape_ops import (
    cast_op,
    concat_op,
    constant_of_shape_op,
    expand_op,
    flatten_op,
    gather_op,
    range_op,
    reshape_op,
    reshape_rule,  # noqa: F401
    shape_op,
    slice_op,
    split_op,
    squeeze_op,
    transpose_op,
    unsqueeze_op,
)
from edgeslim.onnxtorch.spatial import avgpool_op, maxpool_op, pad_op, resize_op


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


def _reduce(f: str) -> Callable:
    def run(op: Op, x: torch.Tensor, axes_t: Any = None) -> torch.Tensor:
        axes = op_axes(op, axes_t)
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


def _gemm_dyn(op: Op, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    a = a.t() if op.a.get("transA", 0) else a
    b = b.t() if op.a.get("transB", 0) else b
    y = op.a.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + op.a.get("beta", 1.0) * c


def _dropout(op: Op, x: torch.Tensor, *_: Any) -> Any:
    return (x, torch.ones_like(x, dtype=torch.bool)) if op.n_out > 1 else x


class _HardSigmoid(torch.autograd.Function):
    """clamp(alpha * x + beta, 0, 1), exported as one ONNX HardSigmoid (not Mul, Add, Clip)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        y = alpha * x + beta
        ctx.save_for_backward(y)
        ctx.alpha = alpha
        return torch.clamp(y, 0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        (y,) = ctx.saved_tensors
        return g * ctx.alpha * ((y > 0) & (y < 1)).to(g.dtype), None, None

    @staticmethod
    def symbolic(g: Any, x: Any, alpha: float, beta: float) -> Any:
        return g.op("HardSigmoid", x, alpha_f=alpha, beta_f=beta)


def _hardsigmoid(op: Op, x: torch.Tensor) -> torch.Tensor:
    return _HardSigmoid.apply(x, float(op.a.get("alpha", 0.2)), float(op.a.get("beta", 0.5)))


def _global_avg(op: Op, x: torch.Tensor) -> torch.Tensor:
    """GlobalAveragePool through torch's adaptive pool (exported as GlobalAveragePool, not as ReduceMean, which
    ONNX Runtime's NCHWc layout does not take)."""
    if x.dim() not in (3, 4, 5):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    return [F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d][x.dim() - 3](x, 1)


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
    "Transpose": transpose_op, "Shape": shape_op, "Size": lambda op, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Reshape": reshape_op, "Flatten": flatten_op, "Gather": gather_op, "Unsqueeze": unsqueeze_op, "Squeeze": squeeze_op,
    "Concat": concat_op, "Slice": slice_op, "Split": split_op, "Cast": cast_op, "ConstantOfShape": constant_of_shape_op,
    "Expand": expand_op, "Tile": lambda op, x, r: x.repeat(ints(r)), "Range": range_op,
    "Pad": pad_op, "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "ReduceSumSquare": _reduce("sumsq"),
    "ArgMax": _argmax, "ArgMin": _argmax,
    "GlobalAveragePool": _global_avg,
    "GlobalMaxPool": lambda op, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "MaxPool": maxpool_op, "AveragePool": avgpool_op, "Resize": resize_op, "Upsample": resize_op,
    "MatMul": lambda op, a, b: a @ b, "Gemm": _gemm_dyn, "LayerNormalization": _layernorm,
}


def _fold_n(f: Callable, xs: tuple) -> torch.Tensor:
    y = xs[0]
    for x in xs[1:]:
        y = f(y, x)
    return y
