"""ONNX spatial ops: Pad (constant/reflect/edge/wrap, any axes), MaxPool/AveragePool (asymmetric pads),
Resize/Upsample (nearest and linear modes mapped to `F.interpolate`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgeslim.onnxtorch.opbase import Op, ints, pylist


def pad_op(op: Op, x: torch.Tensor, pads_t: Any = None, value: Any = None, axes_t: Any = None) -> torch.Tensor:
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


def maxpool_op(op: Op, x: torch.Tensor) -> Any:
    nd = x.dim() - 2
    k = op.a["kernel_shape"]
    pad, tp = _pool_pads(op, nd)
    if tp is not None:
        x = F.pad(x, tp, value=float("-inf"))
    f = [F.max_pool1d, F.max_pool2d, F.max_pool3d][nd - 1]
    return f(x, k, op.a.get("strides", [1] * nd), pad, op.a.get("dilations", [1] * nd),
             ceil_mode=bool(op.a.get("ceil_mode", 0)))


def avgpool_op(op: Op, x: torch.Tensor) -> torch.Tensor:
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


def resize_op(op: Op, x: torch.Tensor, roi: Any = None, scales: Any = None, sizes: Any = None) -> torch.Tensor:
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
