"""Least-squares reconstruction after structured pruning: no labels, no gradient steps.

Removing channels changes what the next layers see. Each Conv (dense, `groups == 1`) and Linear layer from the
first one whose inputs were pruned onwards is refitted so that its output, computed from the *pruned* model's
input at that layer, matches the *original* model's output of the same layer (its kept output channels) on a
few unlabelled samples: a ridge regression per layer, pulled towards the pruned weights,

    W = argmin ||A W - Y||^2 + lam ||W - W0||^2 = (A'A + lam I)^-1 (A'Y + lam W0),

with A the layer's input patches (im2col rows; a column of ones for the bias) and Y the original's outputs at
the same positions. This is the reconstruction step of channel pruning (He et al. 2017, "Channel Pruning for
Accelerating Very Deep Neural Networks"; Luo et al. 2017, ThiNet), done layer by layer in execution order so a
layer's fit sees the upstream layers' fits. The original's layer outputs are computed once (one forward); the
student's layer inputs take one forward per `wave` layers, stopped after the wave's last layer (`wave: 1`, the
default: every fit sees all upstream fits; `wave: k`: about k times fewer forwards). With `crop` < 1 the fit
runs on one random crop per batch of samples (`data.crops`), when the model takes crops: more samples in the
same time.

A fit is kept only where it lowers the layer's error on rows held out of the fit (a fifth of the rows); else
the pruned weights stay. Depthwise and grouped convolutions are left as they are (each output channel sees only
its own inputs: nothing to redistribute). Kept output/input channels are recorded while Torch-Pruning prunes
(`prune_recording`), so the targets are the original's kept channels.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeslim.data.crops import crop_fails, crop_size, random_crop
from edgeslim.prune.structured import torch_pruning_errors

Kept = dict[str, dict[str, list[int]]]


class Reconstruct(BaseModel):
    """Settings of the least-squares reconstruction after a structured prune (`reconstruct`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    samples: int = Field(64, ge=1, description="training-split samples the layers are refitted on")
    rows_per_call: int = Field(512, ge=8, description="output positions sampled per layer call and batch")
    alphas: tuple[float, ...] = Field((1e-3, 1e-2, 1e-1, 1.0), min_length=1, description="ridge weights towards "
                                      "the pruned weights, relative to the mean diagonal of A'A; per layer the one "
                                      "with the lowest error on the held-out rows is kept")
    max_seconds: float = Field(300.0, gt=0, description="time budget; layers not reached keep their weights")
    batch_size: int = Field(8, ge=1)
    wave: int = Field(1, ge=1, description="layers refitted from one forward pass of the samples: 1, strictly in "
                      "order (each fit sees every upstream fit); k, about k times fewer forward passes, a layer's "
                      "fit not seeing the fits of the layers before it in its wave")
    crop: float = Field(1.0, gt=0, le=1, description="fit on one random crop per sample of this fraction of each "
                        "spatial axis of at least 64 (`data.crops`; more samples in the same time) when the model "
                        "takes it; 1: full inputs")


def _count(mod: nn.Module, axis: str) -> int | None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod.out_channels if axis == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if axis == "out" else mod.in_features
    return None


def prune_recording(pruner, model: nn.Module) -> Kept:  # pruner: tp.pruner.MetaPruner
    """Run one step of `pruner` on `model` and return, per Conv/Linear layer name whose channels changed, the
    original indices it kept on each axis ({"out": [...], "in": [...]})."""
    dg = pruner.DG
    names = {id(m): n for n, m in model.named_modules()}
    kept: Kept = {}
    with torch_pruning_errors():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                mod = dep.target.module
                if not isinstance(mod, nn.Module) or id(mod) not in names:
                    continue
                axis = ("out" if dg.is_out_channel_pruning_fn(dep.handler)
                        else "in" if dg.is_in_channel_pruning_fn(dep.handler) else None)
                n = _count(mod, axis) if axis else None
                if axis is None or n is None:
                    continue
                rec = kept.setdefault(names[id(mod)], {})
                cur = rec.setdefault(axis, list(range(n)))
                drop = {int(i) for i in idxs}
                rec[axis] = [c for j, c in enumerate(cur) if j not in drop]
            group.prune()
    return kept


def summary(rec: dict) -> dict:
    """`reconstruct`'s record for a stage's notes: the layer lists become their counts."""
    return {k: v for k, v in rec.items() if k not in ("refitted", "kept_pruned")} | {
        "refitted": len(rec["refitted"]), "kept_pruned": len(rec["kept_pruned"])}


def _dense(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    return (isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups == 1 and not isinstance(mod.padding, str)
            and not getattr(mod, "transposed", False))


def _rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as regression rows [positions, features] (im2col for a convolution)."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    conv: Any = mod
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, s, d, p = (1, conv.kernel_size[0]), (1, conv.stride[0]), (1, conv.dilation[0]), (0, conv.padding[0])
    else:
        k, s, d, p = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    if conv.padding_mode != "zeros":
        pad = (p[1], p[1], p[0], p[0])
        x = F.pad(x, pad, mode=conv.padding_mode)
        p = (0, 0)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [B, C*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(mod: nn.Module, y: torch.Tensor, out_idx: list[int] | None) -> torch.Tensor:
    """The original layer's output as rows [positions, kept output channels]."""
    if isinstance(mod, nn.Linear):
        y = y.reshape(-1, y.shape[-1])
        return y if out_idx is None else y[:, out_idx]
    y = y.reshape(y.shape[0], y.shape[1], -1)  # [B, C, L]
    if out_idx is not None:
        y = y[:, out_idx]
    return y.transpose(1, 2).reshape(-1, y.shape[1])


def _weight_matrix(mod: Any) -> torch.Tensor:
    """The layer's weights as [features (+1 for the bias), out]."""
    w = mod.weight.detach().reshape(mod.weight.shape[0], -1).double()
    if mod.bias is not None:
        w = torch.cat([w, mod.bias.detach().double()[:, None]], 1)
    return w.t()


def _set_weights(mod: Any, w: torch.Tensor) -> None:
    w = w.t()
    with torch.no_grad():
        if mod.bias is not None:
            mod.bias.copy_(w[:, -1].to(mod.bias.dtype))
            w = w[:, :-1]
        mod.weight.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))


class _Stop(Exception):
    """Raised by the last hook of a wave: the rest of the forward pass is not needed."""


class _Acc:
    """Normal equations of one layer: fit rows and held-out check rows."""

    def __init__(self) -> None:
        self.g: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self.check: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, a: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        a = a.double()
        y = y.double()
        hold = torch.rand(len(a), generator=gen) < 0.2
        if hold.any():
            self.check.append((a[hold], y[hold]))
        a, y = a[~hold], y[~hold]
        g, h = a.t() @ a, a.t() @ y
        self.g = g if self.g is None else self.g + g
        self.h = h if self.h is None else self.h + h


def _with_ones(a: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1) if bias else a


def _solve(acc: _Acc, w0: torch.Tensor, alphas: tuple[float, ...]) -> tuple[torch.Tensor | None, float, float]:
    """The ridge solution (towards `w0`) with the lowest relative error on the held-out rows, with that error and
    `w0`'s; None when no alpha beats `w0` there (or there are no held-out rows to tell)."""
    assert acc.g is not None and acc.h is not None
    if not acc.check:
        return None, 1.0, 1.0
    a = torch.cat([c[0] for c in acc.check])
    y = torch.cat([c[1] for c in acc.check])
    scale = float((y ** 2).sum()) + 1e-30

    def err(w: torch.Tensor) -> float:
        return float(((a @ w - y) ** 2).sum()) / scale

    before = err(w0)
    best: tuple[float, torch.Tensor | None] = (before, None)
    eye = torch.eye(acc.g.shape[0], dtype=acc.g.dtype)
    diag = float(torch.diagonal(acc.g).mean()) + 1e-12
    for alpha in alphas:
        lam = alpha * diag
        try:
            w = torch.linalg.solve(acc.g + lam * eye, acc.h + lam * w0)
        except RuntimeError:  # singular even with the ridge
            continue
        e = err(w)
        if e < best[0]:
            best = (e, w)
    return best[1], before, best[0]


def _accumulate(student: nn.Module, jobs: list[tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], _Acc]],
                xb: torch.Tensor, gen: torch.Generator) -> None:
    """Run `student` on the batch `xb` up to the last call of the last layer of `jobs` and add each layer's input
    rows to its accumulator at the positions the original's outputs (one (positions, targets) per call) were
    sampled at. `jobs`: (layer, calls, accumulator) per layer of one wave."""
    live = [(m, calls, acc) for m, calls, acc in jobs if calls]
    if not live:
        return
    left = [len(live)]

    def hook_for(calls: list[tuple[torch.Tensor, torch.Tensor]], acc: _Acc):
        seen = [0]

        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            k = seen[0]
            seen[0] += 1
            if k < len(calls):
                pos, y = calls[k]
                acc.add(_with_ones(_rows(m, inp[0].detach()), m.bias is not None)[pos], y, gen)
                if k == len(calls) - 1:
                    left[0] -= 1
            if left[0] <= 0:
                raise _Stop
        return hook

    hks = [m.register_forward_hook(hook_for(calls, acc)) for m, calls, acc in live]
    try:
        _forward(student, xb)
    finally:
        for hk in hks:
            hk.remove()


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass


def reconstruct(student: nn.Module, teacher: nn.Module, kept: Kept, x: np.ndarray, cfg: Reconstruct | None = None,
                seed: int = 0) -> dict:
    """Refit the dense layers of the pruned `student` to the original `teacher`'s layer outputs on samples `x`
    (model inputs, samples on axis 0; the first `cfg.samples` are used), one layer at a time in execution order.
    Returns the record: layers refitted / kept as pruned, the mean relative layer error before and after on
    held-out rows, seconds. Stops between layers when `cfg.max_seconds` is spent (the layers done stay fitted)."""
    cfg = cfg or Reconstruct()
    x = x[:cfg.samples]
    batch_size, rows_per_call = cfg.batch_size, cfg.rows_per_call
    t0 = time.monotonic()
    empty = {"layers": 0, "refitted": [], "kept_pruned": [], "samples": len(x), "seconds": 0.0}
    if not kept or len(x) == 0:
        return empty
    smods = dict(student.named_modules())
    tmods = dict(teacher.named_modules())
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n) if n not in order else None)
             for n, m in smods.items() if _dense(m) and n in tmods]
    student.eval()
    teacher.eval()
    try:
        with torch.no_grad():
            student(torch.from_numpy(x[:1]))
    finally:
        for hk in hooks:
            hk.remove()
    pruned_in = [k for k, n in enumerate(order) if "in" in kept.get(n, {})]
    layers = order[pruned_in[0]:] if pruned_in else []
    if not layers:
        return {**empty, "seconds": round(time.monotonic() - t0, 2)}
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.from_numpy(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    size = crop_size(x.shape[1:], cfg.crop) if np.issubdtype(x.dtype, np.floating) else None
    crop_note = crop_fails([student, teacher], batches[0][:2], size) if size else None
    if size and crop_note is None:
        batches = [random_crop(xb, size, gen) for xb in batches]
    # the original's outputs of every layer, once: positions sampled per call, kept output channels only
    cache: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for b, xb in enumerate(batches):
        def t_hook(n: str, b: int = b):
            def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
                y = _targets(smods[n], out.detach(), kept.get(n, {}).get("out"))
                pos = torch.randperm(len(y), generator=gen)[:rows_per_call]
                cache.setdefault((n, b), []).append((pos, y[pos].clone()))
            return fn
        hs = [tmods[n].register_forward_hook(t_hook(n)) for n in layers]
        try:
            _forward(teacher, xb)
        finally:
            for hk in hs:
                hk.remove()
    refitted: list[str] = []
    unchanged: list[str] = []
    err_before: list[float] = []
    err_after: list[float] = []
    stopped = False
    for at in range(0, len(layers), cfg.wave):
        if time.monotonic() - t0 > cfg.max_seconds:
            stopped = True
            break
        wave = layers[at:at + cfg.wave]
        accs = {n: _Acc() for n in wave}
        for b, xb in enumerate(batches):
            _accumulate(student, [(smods[n], cache.get((n, b), []), accs[n]) for n in wave], xb, gen)
        for n in wave:
            acc, mod = accs[n], smods[n]
            if acc.g is None or acc.h is None:
                continue
            w, before, after = _solve(acc, _weight_matrix(mod), cfg.alphas)
            if w is not None:
                _set_weights(mod, w)
                refitted.append(n)
                err_before.append(before)
                err_after.append(after)
            else:
                unchanged.append(n)
    return {
        "layers": len(layers), "refitted": refitted, "kept_pruned": unchanged, "samples": len(x),
        "rel_error_before": round(float(np.mean(err_before)), 5) if err_before else None,
        "rel_error_after": round(float(np.mean(err_after)), 5) if err_after else None,
        "stopped_by_time": stopped, "seconds": round(time.monotonic() - t0, 2),
        **({"crop": list(size[1:])} if size and crop_note is None else {}),
        **({"crop_note": f"full inputs: the model does not take crops ({crop_note})"} if crop_note else {}),
    }
