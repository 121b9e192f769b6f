"""Fake quantization for quantization-aware training (QAT), with a straight-through estimator (STE).

Conv and Linear layers are wrapped (`QuantWrap`): the wrapper quantizes the layer's *input* activation
(asymmetric uint8, per tensor) and its *weight* (symmetric signed, per output channel or per tensor),
then runs the original layer's op. The original layer stays inside as `.inner`, so hooks that walk
`nn.Conv*`/`nn.Linear` weights (e.g. pruning mask keepers) still find and mask the float shadow weights.

Scales are either derived (weights: max|w| / qmax each step; activations: an EMA of the observed range)
or learned with LSQ (Esser et al. 2020, "Learned Step Size Quantization"): the scale is a parameter
whose gradient flows through round() by the STE, scaled by 1/sqrt(numel * qmax).

Exact float32 arithmetic matches ONNX Runtime's QuantizeLinear/DequantizeLinear: round half to even,
saturate, `(q - zero_point) * scale`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.models.probe import probe

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def weight_of(layer: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, layer.weight)


class _Straight(torch.autograd.Function):
    """Forward returns `y` exactly; the gradient flows to `x` unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return y.detach().clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return g, None


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`y` forward, identity gradient to `x`. Exact, unlike `x + (y - x).detach()`, which rounds."""
    return _Straight.apply(x, y)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward (half to even, like ONNX), identity gradient."""
    return ste(x, torch.round(x))


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: torch.Tensor, g: float) -> torch.Tensor:  # type: ignore[override]
        ctx.g = g
        return s.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.g, None


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """Value `s` exactly, gradient multiplied by `g` (LSQ's step-size gradient scale)."""
    return _GradScale.apply(s, g)


def weight_range(bits: int) -> tuple[int, int]:
    """Restricted symmetric signed range, e.g. 8 bits -> [-127, 127], 4 bits -> [-7, 7]."""
    q = 2 ** (bits - 1) - 1
    return -q, q


class WeightQuant(nn.Module):
    """Symmetric weight fake-quant; per output channel (axis 0) or per tensor; optional LSQ scale."""

    def __init__(self, w: torch.Tensor, bits: int, per_channel: bool, lsq: bool):
        super().__init__()
        self.bits, self.per_channel, self.lsq = bits, per_channel, lsq
        self.qmin, self.qmax = weight_range(bits)
        init = self.derived_scale(w.detach())
        self.scale = nn.Parameter(init) if lsq else None

    def derived_scale(self, w: torch.Tensor) -> torch.Tensor:
        """max|w| / qmax (shape (C_out,) per channel or () per tensor), never zero."""
        a = w.abs().flatten(1).amax(1) if self.per_channel else w.abs().amax()
        return (a / self.qmax).clamp_min(1e-8).to(torch.float32)

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            return self.scale.abs().clamp_min(1e-8)
        return self.derived_scale(w.detach())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.current_scale(w)
        if self.scale is not None:
            s = grad_scale(s, 1.0 / float(np.sqrt(w.numel() * self.qmax)))
        shape = (-1,) + (1,) * (w.dim() - 1) if s.dim() == 1 else ()
        s = s.reshape(shape)
        q = torch.clamp(round_ste(w / s), self.qmin, self.qmax)
        return q * s

    @torch.no_grad()
    def integers(self, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(int8 weight codes, float32 scale per channel or scalar) as stored in the ONNX model."""
        s = self.current_scale(w).detach()
        shape = (-1,) + (1,) * (w.dim() - 1) if s.dim() == 1 else ()
        q = torch.clamp(torch.round(w / s.reshape(shape)), self.qmin, self.qmax)
        return q.to(torch.int8).numpy(), s.numpy().astype(np.float32)


class ActQuant(nn.Module):
    """Asymmetric unsigned per-tensor activation fake-quant (uint8 by default).

    The range [lo, hi] (always containing 0) is observed on calibration batches, then tracked by an EMA
    during training (derived mode) or frozen with a learned LSQ scale and fixed zero point (lsq mode).
    """

    lo: torch.Tensor
    hi: torch.Tensor
    zp: torch.Tensor

    def __init__(self, bits: int = 8, lsq: bool = False, momentum: float = 0.9):
        super().__init__()
        self.bits, self.lsq, self.momentum = bits, lsq, momentum
        self.qmax = 2**bits - 1
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("zp", torch.tensor(0.0))
        self.scale = nn.Parameter(torch.tensor(1.0)) if lsq else None
        self.observing = False  # True while calibrating: record the range, pass values through
        self.enabled = False

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Calibration keeps the extremes seen (MinMax); training tracks them with an EMA."""
        lo, hi = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
        if self.observing:
            self.lo.fill_(min(lo, float(self.lo)))
            self.hi.fill_(max(hi, float(self.hi)))
        else:
            m = self.momentum
            self.lo.mul_(m).add_((1 - m) * lo)
            self.hi.mul_(m).add_((1 - m) * hi)

    @torch.no_grad()
    def start(self) -> None:
        """Leave calibration: fix the zero point and (LSQ) initialise the learned scale."""
        self.observing, self.enabled = False, True
        s = self.derived()[0]
        if self.scale is not None:
            self.scale.fill_(float(s))
        self.zp.fill_(float(torch.clamp(torch.round(-self.lo / s), 0, self.qmax)))

    def derived(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = ((self.hi - self.lo) / self.qmax).clamp_min(1e-8)
        zp = torch.clamp(torch.round(-self.lo / s), 0, self.qmax)
        return s, zp

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is not None:
            return self.scale.abs().clamp_min(1e-8), self.zp
        return self.derived()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or (self.training and self.scale is None and self.enabled):
            self.observe(x)
        if not self.enabled:
            return x
        s, zp = self.params()
        if self.scale is not None:
            s = grad_scale(s, 1.0 / float(np.sqrt(x[0].numel() * self.qmax)))
        else:
            s, zp = s.detach(), zp.detach()
        q = torch.clamp(round_ste(x / s) + zp, 0, self.qmax)
        return (q - zp) * s

    def export(self) -> tuple[float, int]:
        """(scale, zero point) as float32 / uint8 values for QuantizeLinear."""
        s, zp = self.params()
        return float(np.float32(float(s.detach()))), int(zp)


class QuantWrap(nn.Module):
    """A Conv/Linear with fake-quantized input and weight; the float layer lives on in `.inner`."""

    inner: nn.Module
    wq: Callable[[torch.Tensor], torch.Tensor]
    aq: ActQuant | None

    def __init__(self, inner: nn.Module, wq: Callable[[torch.Tensor], torch.Tensor], aq: ActQuant | None):
        super().__init__()
        self.inner, self.wq, self.aq = inner, wq, aq

    @property
    def fweight(self) -> torch.Tensor:
        """The float (shadow) weight the optimizer updates."""
        return weight_of(self.inner)

    def qweight(self) -> torch.Tensor:
        return self.wq(self.fweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aq is not None:
            x = self.aq(x)
        w = self.qweight()
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, self.inner.bias)
        conv = cast(nn.Conv2d, self.inner)  # Conv1d has the same _conv_forward(x, w, b)
        return conv._conv_forward(x, w, conv.bias)


def wrap_layers(model: nn.Module, make: Callable[[str, nn.Module], QuantWrap | None]) -> list[str]:
    """Replace every Conv1d/Conv2d/Linear (in place) by `make(name, layer)` when it returns a wrapper."""
    done = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, QUANTIZABLE):
                full = f"{name}.{child_name}" if name else child_name
                w = make(full, child)
                if w is not None:
                    setattr(mod, child_name, w)
                    done.append(full)
    return done


def wrappers(model: nn.Module) -> dict[str, QuantWrap]:
    """Wrapped layers by the name the *unwrapped* model gives them (e.g. `layer1.conv1`)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantWrap)}


@torch.no_grad()
def unwrap(model: nn.Module) -> nn.Module:
    """A copy with every wrapper replaced by its float layer holding the *quantized* weight values
    (QuantWrap here; other wrappers, e.g. `quant.recurrent.QuantRNN`, give theirs through `baked()`)."""
    out = copy.deepcopy(model)
    for mod in list(out.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, QuantWrap):
                cast(torch.Tensor, child.inner.weight).copy_(child.qweight())
                setattr(mod, child_name, child.inner)
            elif callable(getattr(child, "baked", None)):
                setattr(mod, child_name, child.baked())  # type: ignore[operator]
    return out


@torch.no_grad()
def calibrate(model: nn.Module, x: np.ndarray, batch: int = 64) -> None:
    """Run calibration inputs through the model to set activation ranges, then enable quantization."""
    aqs = [m for m in model.modules() if isinstance(m, ActQuant)]
    for a in aqs:
        a.observing = True
    model.eval()
    for i in range(0, len(x), batch):
        model(torch.from_numpy(x[i : i + batch].astype(np.float32)))
    for a in aqs:
        a.start()


@torch.no_grad()
def share_input_quantizers(model: nn.Module, sample: torch.Tensor) -> int:
    """Wrappers that read the same tensor (e.g. a residual block's conv1 and 1x1 shortcut) get one shared
    ActQuant, so the exported graph has one Q/DQ pair per tensor, as ONNX Runtime's fusions expect.
    Returns how many quantizers were merged away."""
    first: dict[int, QuantWrap] = {}
    keep: list[torch.Tensor] = []
    merged = 0
    hooks = []

    def pre(m: nn.Module, inp: tuple) -> None:
        nonlocal merged
        assert isinstance(m, QuantWrap)
        owner = first.setdefault(id(inp[0]), m)
        keep.append(inp[0])
        if owner is not m and m.aq is not None:
            m.aq = owner.aq
            merged += 1

    for m in model.modules():
        if isinstance(m, QuantWrap):
            hooks.append(m.register_forward_pre_hook(pre))
    probe(model, sample, hooks)
    return merged


@dataclass
class FoldedPair:
    conv: str
    bn: str


@torch.no_grad()
def fold_bn(model: nn.Module, sample: torch.Tensor) -> list[FoldedPair]:
    """Fold every BatchNorm whose input is directly a Conv's output into that Conv (in place; the BN
    becomes Identity). Pairs are found by running `sample` with forward hooks, so any module structure
    works. Assumes the conv output feeds only the BN, as in conv-bn-relu blocks."""
    produced: dict[int, str] = {}
    pairs: list[FoldedPair] = []
    keep: list[torch.Tensor] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def conv_hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = names[m]
        keep.append(out)

    def bn_hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs.append(FoldedPair(src, names[m]))

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(bn_hook))
    probe(model, sample, hooks)
    mods = dict(model.named_modules())
    for p in pairs:
        conv, bn = mods[p.conv], mods[p.bn]
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        b = conv.bias if conv.bias is not None else torch.zeros_like(std)
        new_b = (b - bn.running_mean) * factor + beta
        conv.bias = nn.Parameter(new_b.detach().clone())
        parent_name, _, attr = p.bn.rpartition(".")
        setattr(mods[parent_name] if parent_name else model, attr, nn.Identity())
    return pairs
