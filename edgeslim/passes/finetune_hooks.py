"""What a pass leaves for every later fine-tuning of the run, by its key in the run's carry.

A pass returns `PassResult.carry` entries (stored with its stage, so a resumed run sees them too); from
then on, every `ctx.finetune_model` builds these hooks from them. One table, so a reader sees every key:

    keep_sparsity  True                 zeros stay zero (magnitude_prune, sensitivity_prune)
    keep_nm        {n, m, layers}       the N:M pattern stays (nm_prune)
    l1_reg, group_lasso, bn_l1  strength  the regulariser stays in the loss (sparsity_train persist)
    distill        {temperature, ...}   logit KD from the run's teachers replaces the loss (distill keep)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim import models
from edgeslim.distill.kd import Teachers, kd_loss_fn
from edgeslim.distill.train import make_transfer
from edgeslim.passes.base import RunContext, register_hook
from edgeslim.prune.masks import apply_masks, prunable
from edgeslim.prune.regularizers import regulariser
from edgeslim.train import Hooks

REGULARISER_KEYS = {"l1": "l1_reg", "group_lasso": "group_lasso", "bn_l1": "bn_l1"}  # regulariser -> carry key


@register_hook("keep_sparsity")
def keep_sparsity(model: nn.Module, ctx: RunContext, _: object) -> Hooks:
    """Fine-tuning keeps every weight that is zero now at zero (masks fixed during fine-tuning)."""
    masks = {n: (w.detach() != 0) for n, w in prunable(model)}
    return Hooks(after_step=[lambda m: apply_masks(m, masks)])


@register_hook("keep_nm")
def keep_nm(model: nn.Module, ctx: RunContext, spec: dict) -> Hooks:
    """Re-impose the N:M masks (recomputed from today's zeros) after every optimiser step."""
    layers = set(spec["layers"])
    masks = {name: (w.detach() != 0) for name, w in prunable(model) if name in layers}
    return Hooks(after_step=[lambda mod: apply_masks(mod, masks)])


def _regulariser_hook(kind: str):  # -> HookFactory
    def factory(model: nn.Module, ctx: RunContext, strength: float) -> Hooks:
        return regulariser(kind, float(strength))

    return factory


for _kind, _key in REGULARISER_KEYS.items():
    register_hook(_key)(_regulariser_hook(_kind))


@register_hook("distill")
def distill_hook(model: nn.Module, ctx: RunContext, value: dict) -> Hooks:
    """Later fine-tuning distils (logit KD) from the same teachers the `distill` pass used."""
    teachers_paths = value.get("teachers", [])
    state: dict[str, Any] = {}

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if "fn" not in state:
            ts = [ctx.teacher()] + [models.load_model(Path(p))[0] for p in teachers_paths]
            transfer = None
            if value.get("transfer"):
                transfer = make_transfer(value["transfer"], value.get("transfer_ratio"), ts, value["task"],
                                         tuple(value["input_shape"]), value["n_train"], ctx.seed)
            state["fn"] = kd_loss_fn(Teachers(ts, (), value.get("cache", True)), value["temperature"], value["alpha"],
                                     value.get("teacher_weights"), mixup=value.get("mixup"), seed=ctx.seed,
                                     transfer=transfer)
        return state["fn"](m, x, y, out)

    return Hooks(loss=loss)
