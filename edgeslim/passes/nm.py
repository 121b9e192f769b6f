"""N:M semi-structured sparsity (default 2:4): in every group of M consecutive weights along a layer's
reduction axis (input features; for a conv, in_channels x kernel positions as stored), keep the N largest.

This is the pattern sparse tensor cores (NVIDIA Ampere and later) accelerate. ONNX Runtime's CPU kernels
do not, so on CPU the stage shows the same latency and the sparsity only pays in compressed size; the
notes say so. The mask is fixed during fine-tuning (a mask keeper runs after every optimiser step and
later passes inherit it), so the pattern survives training.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim.data import Task
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register, register_hook
from edgeslim.passes.prune import apply_masks, before_after, prunable, weight_sparsity, write_sparse_for_stage
from edgeslim.train import Hooks, TrainConfig


class NMPrune(PassConfig):
    n: int = Field(2, ge=1, description="weights kept per group")
    m: int = Field(4, ge=2, description="group size")
    skip_first: bool = True  # the first layer has few inputs and is sensitive; dense is common practice
    finetune: TrainConfig | None = None

    @model_validator(mode="after")
    def _n_below_m(self) -> NMPrune:
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        return self


@torch.no_grad()
def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """Keep-mask with the N largest |w| of every M consecutive weights along the reduction axis, or None
    when that axis is not a multiple of M (the layer stays dense)."""
    rows = w.reshape(w.shape[0], -1)  # (out, in * k...)
    if rows.shape[1] % m:
        return None
    groups = rows.abs().reshape(rows.shape[0], -1, m)  # (out, in*k/M, M)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(w.shape)


def is_nm(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M along the reduction axis has at most N non-zeros."""
    rows = w.detach().reshape(w.shape[0], -1)
    if rows.shape[1] % m:
        return False
    return bool(((rows != 0).reshape(rows.shape[0], -1, m).sum(2) <= n).all())


def nm_masks(model: nn.Module, n: int, m: int, skip_first: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    masks, skipped = {}, []
    for i, (name, w) in enumerate(prunable(model)):
        mask = None if (skip_first and i == 0) else nm_mask(w, n, m)
        if mask is None:
            skipped.append(name)
        else:
            masks[name] = mask
    return masks, skipped


@register_hook("keep_nm")
def keep_nm(model: nn.Module, ctx: RunContext, spec: dict) -> Hooks:
    """Re-impose the N:M masks (recomputed from today's zeros) after every optimiser step."""
    layers = set(spec["layers"])
    masks = {name: (w.detach() != 0) for name, w in prunable(model) if name in layers}
    return Hooks(after_step=[lambda mod: apply_masks(mod, masks)])


@register("nm_prune", NMPrune)
def nm_prune(model: nn.Module | None, task: Task, cfg: NMPrune, ctx: RunContext) -> PassResult:
    """N:M (2:4) semi-structured sparsity along each layer's reduction axis, fine-tuned with masks fixed."""
    assert model is not None
    before = copy.deepcopy(model).eval()
    masks, skipped = nm_masks(model, cfg.n, cfg.m, cfg.skip_first)
    apply_masks(model, masks)
    carry = {"keep_nm": {"n": cfg.n, "m": cfg.m, "layers": sorted(masks)}}
    ctx.carry.update(carry)
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="nm_prune")
    weights = dict(prunable(model))
    notes = {
        "pattern": f"{cfg.n}:{cfg.m}", "layers_nm": sorted(masks), "layers_dense": skipped,
        "pattern_holds": all(is_nm(weights[k], cfg.n, cfg.m) for k in masks),
        "weight_sparsity": round(weight_sparsity(model), 4), "val_accuracy": hist["val_accuracy"],
        "speed_note": "ONNX Runtime CPU has no N:M kernels: expect no latency gain here; sparse tensor "
                      "cores (Ampere+) run 2:4",
    }
    notes.update(write_sparse_for_stage(model, task, ctx))
    notes.update(before_after(before, model.eval(), task))
    return PassResult(model, notes=notes, carry=carry)
