"""Sparsity-inducing regularisers for training: L1 on weights, group lasso on output channels, and L1 on
BatchNorm scales (network slimming, Liu et al. 2017). They are trainer hooks (`extra_losses`) that push
weights, channels or BN scales towards zero so that a following magnitude or structured (l2 / bn_scale
importance) pruning removes less that matters. The loss terms are sums (not means), scaled by `strength`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from edgeslim.prune.masks import prunable
from edgeslim.train import Hooks

Kind = Literal["l1", "group_lasso", "bn_l1"]


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def l1_penalty(model: nn.Module) -> torch.Tensor:
    return sum((w.abs().sum() for _, w in prunable(model)), torch.zeros(()))


def group_lasso_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over Conv/Linear output channels of the channel's L2 norm, scaled by sqrt(group size)."""
    total = torch.zeros(())
    for _, w in prunable(model):
        rows = w.reshape(w.shape[0], -1)
        total = total + rows.norm(dim=1).sum() * rows.shape[1] ** 0.5
    return total


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    return sum((bn.weight.abs().sum() for bn in batchnorms(model)), torch.zeros(()))


PENALTIES = {"l1": l1_penalty, "group_lasso": group_lasso_penalty, "bn_l1": bn_l1_penalty}


def regulariser(kind: str, strength: float) -> Hooks:
    fn = PENALTIES[kind]
    return Hooks(extra_losses=[lambda model, x, y, out: strength * fn(model)])


@torch.no_grad()
def small_fraction(model: nn.Module, kind: str, rel: float = 0.01) -> float:
    """Fraction of weights (l1), channels (group_lasso) or BN scales (bn_l1) below `rel` x the largest."""
    if kind == "bn_l1":
        vals = torch.cat([bn.weight.abs() for bn in batchnorms(model)])
    elif kind == "group_lasso":
        vals = torch.cat([w.reshape(w.shape[0], -1).norm(dim=1) for _, w in prunable(model)])
    else:
        vals = torch.cat([w.abs().flatten() for _, w in prunable(model)])
    return float((vals < rel * vals.max()).float().mean())
