"""Weight masks for unstructured pruning: which weights to zero (global, per-layer or LAMP magnitude
thresholds), how the target sparsity grows over rounds (one-shot, linear, cubic), and applying masks.

Zeroed weights only shrink a model on disk when stored compressed (`edgeslim.formats.sparse`) and only
speed it up on sparse kernels; the masks here decide *which* weights go.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Schedule = Literal["oneshot", "linear", "cubic"]


def schedule_ratios(final: float, rounds: int, kind: str) -> list[float]:
    """Target ratio after each round. cubic: s_t = s_f (1 - (1 - t/n)^3) (Zhu & Gupta 2017, s_i = 0):
    prunes fast while redundancy is high, slowly near the end."""
    if kind == "oneshot" or rounds <= 1:
        return [final]
    ts = [t / rounds for t in range(1, rounds + 1)]
    if kind == "linear":
        return [final * t for t in ts]
    return [final * (1 - (1 - t) ** 3) for t in ts]


def prunable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of Conv and Linear layers (biases and norms are tiny and sensitive)."""
    return [
        (n, m.weight)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight is not None
    ]


def _threshold(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(sparsity * values.numel())
    return values.kthvalue(k).values if k > 0 else values.min() - 1


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP score of each weight: w_u^2 / sum of w_v^2 over the layer's weights at least as large. The
    largest weight of every layer scores 1, so a global threshold below 1 never removes a whole layer."""
    sq = w.flatten() ** 2
    order = sq.argsort()
    sorted_sq = sq[order]
    tail = sorted_sq.flip(0).cumsum(0).flip(0)  # sum over this and all larger weights
    out = torch.empty_like(sq)
    out[order] = sorted_sq / tail.clamp_min(1e-30)
    return out.reshape(w.shape)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module, sparsity: float, scope: str, per_layer: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks. `per_layer` (layer name -> sparsity) overrides `sparsity` in layer scope."""
    layers = prunable(model)
    if scope == "lamp":
        scores = {n: lamp_scores(w.detach()) for n, w in layers}
        thr = _threshold(torch.cat([v.flatten() for v in scores.values()]), sparsity)
        return {n: scores[n] > thr for n, _ in layers}
    if scope == "global":
        thr = _threshold(torch.cat([w.detach().abs().flatten() for _, w in layers]), sparsity)
        return {n: (w.abs() > thr) for n, w in layers}
    masks = {}
    for n, w in layers:
        s = (per_layer or {}).get(n, sparsity)
        masks[n] = w.abs() > _threshold(w.abs().flatten(), s) if s > 0 else torch.ones_like(w, dtype=torch.bool)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for n, w in prunable(model):
        if n in masks:
            w.mul_(masks[n].to(w.device, w.dtype))  # masks made on the CPU, weights maybe on the accelerator


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of Conv/Linear weights that are exactly zero."""
    ws = [w.detach() for _, w in prunable(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws)))
