"""Unstructured magnitude pruning (global or per layer) with masks that survive fine-tuning.

Zeroed weights only shrink a model on disk when stored compressed, and only speed it up on sparse
kernels; the stage metrics report non-zero parameters so users can see which it is.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.train import Hooks, TrainConfig


class MagnitudePrune(PassConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of prunable weights set to zero")
    scope: Literal["global", "layer"] = "global"
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


def prunable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights of Conv and Linear layers (biases and norms are tiny and sensitive)."""
    return [
        (n, m.weight)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight is not None
    ]


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    layers = prunable(model)
    if scope == "global":
        flat = torch.cat([w.detach().abs().flatten() for _, w in layers])
        k = int(sparsity * flat.numel())
        thr = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        return {n: (w.abs() > thr) for n, w in layers}
    masks = {}
    for n, w in layers:
        k = int(sparsity * w.numel())
        thr = w.abs().flatten().kthvalue(k).values if k > 0 else w.abs().min() - 1
        masks[n] = w.abs() > thr
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for n, w in prunable(model):
        if n in masks:
            w.mul_(masks[n].to(w.dtype))


@register_hook("keep_sparsity")
def keep_sparsity(model: nn.Module, ctx: RunContext, _: object) -> Hooks:
    """Fine-tuning keeps every weight that is zero now at zero (masks fixed during fine-tuning)."""
    masks = {n: (w.detach() != 0) for n, w in prunable(model)}
    return Hooks(after_step=[lambda m: apply_masks(m, masks)])


@register("magnitude_prune", MagnitudePrune)
def magnitude_prune(model: nn.Module | None, task: Task, cfg: MagnitudePrune, ctx: RunContext) -> PassResult:
    """Zero the smallest-magnitude weights to a target sparsity, then fine-tune with masks fixed."""
    assert model is not None
    masks = magnitude_masks(model, cfg.sparsity, cfg.scope)
    apply_masks(model, masks)
    ctx.carry["keep_sparsity"] = True
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="magnitude_prune")
    return PassResult(model, notes={"val_accuracy": hist["val_accuracy"]}, carry={"keep_sparsity": True})
