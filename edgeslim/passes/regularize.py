"""Sparsity-inducing regularisers for training: L1 on weights, group lasso on output channels, and L1 on
BatchNorm scales (network slimming, Liu et al. 2017).

They are trainer hooks (`extra_losses`). The `sparsity_train` pass trains with one of them; with
`persist: true` every later fine-tuning keeps it (through `ctx.carry`). They push weights, channels or BN
scales towards zero so that a following magnitude, structured (l2 / bn_scale importance) pass removes
less that matters. The loss terms are sums (not means), scaled by `strength`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.passes.prune import prunable
from edgeslim.train import Hooks, TrainConfig

Kind = Literal["l1", "group_lasso", "bn_l1"]


def _bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
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
    return sum((bn.weight.abs().sum() for bn in _bns(model)), torch.zeros(()))


PENALTIES = {"l1": l1_penalty, "group_lasso": group_lasso_penalty, "bn_l1": bn_l1_penalty}


def regulariser(kind: str, strength: float) -> Hooks:
    fn = PENALTIES[kind]
    return Hooks(extra_losses=[lambda model, x, y, out: strength * fn(model)])


@register_hook("l1_reg")
def _l1_hook(model: nn.Module, ctx: RunContext, strength: float) -> Hooks:
    return regulariser("l1", float(strength))


@register_hook("group_lasso")
def _gl_hook(model: nn.Module, ctx: RunContext, strength: float) -> Hooks:
    return regulariser("group_lasso", float(strength))


@register_hook("bn_l1")
def _bn_hook(model: nn.Module, ctx: RunContext, strength: float) -> Hooks:
    return regulariser("bn_l1", float(strength))


HOOK_NAME = {"l1": "l1_reg", "group_lasso": "group_lasso", "bn_l1": "bn_l1"}


class SparsityTrain(PassConfig):
    kind: Kind = "bn_l1"
    strength: float = Field(1e-4, gt=0, description="multiplier of the penalty (a sum) added to the loss")
    persist: bool = False  # keep the regulariser in every later fine-tuning
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


@torch.no_grad()
def small_fraction(model: nn.Module, kind: str, rel: float = 0.01) -> float:
    """Fraction of weights (l1), channels (group_lasso) or BN scales (bn_l1) below `rel` x the largest."""
    if kind == "bn_l1":
        vals = torch.cat([bn.weight.abs() for bn in _bns(model)])
    elif kind == "group_lasso":
        vals = torch.cat([w.reshape(w.shape[0], -1).norm(dim=1) for _, w in prunable(model)])
    else:
        vals = torch.cat([w.abs().flatten() for _, w in prunable(model)])
    return float((vals < rel * vals.max()).float().mean())


@register("sparsity_train", SparsityTrain)
def sparsity_train(model: nn.Module | None, task: Task, cfg: SparsityTrain, ctx: RunContext) -> PassResult:
    """Train with an L1 / group-lasso / BN-scale (network slimming) penalty before pruning."""
    assert model is not None
    if cfg.kind == "bn_l1" and not _bns(model):
        raise EdgeslimError("sparsity_train: kind 'bn_l1' needs BatchNorm layers; this model has none "
                            "(use l1 or group_lasso)")
    before = small_fraction(model, cfg.kind)
    # keep the last epoch: the best-validation one is usually an early, less sparse one
    train_cfg = (cfg.finetune or ctx.finetune).model_copy(update={"keep_best": False})
    hist = ctx.finetune_model(model, task, train_cfg, desc=f"sparsity_train {cfg.kind}",
                              hooks=regulariser(cfg.kind, cfg.strength))
    carry = {HOOK_NAME[cfg.kind]: cfg.strength} if cfg.persist else {}
    return PassResult(model, carry=carry, notes={
        "kind": cfg.kind, "strength": cfg.strength, "val_accuracy": hist["val_accuracy"],
        "small_fraction_before": round(before, 4), "small_fraction_after": round(small_fraction(model, cfg.kind), 4),
    })
