"""`nm_prune`: N:M semi-structured sparsity (default 2:4): in every group of M consecutive weights along a layer's
reduction axis (input features; for a conv, in_channels x kernel positions as stored), keep the N largest.

This is the pattern sparse tensor cores (NVIDIA Ampere and later) accelerate. ONNX Runtime's CPU kernels
do not, so on CPU the stage shows the same latency and the sparsity only pays in compressed size; the
notes say so. The mask is fixed during fine-tuning (a mask keeper runs after every optimiser step and
later passes inherit it), so the pattern survives training.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from edgeslim.data import Task
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import apply_masks, prunable, weight_sparsity
from edgeslim.prune.nm import is_nm, nm_masks
from edgeslim.train import TrainConfig


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


@register("nm_prune", NMPrune)
def nm_prune(model: nn.Module | None, task: Task, cfg: NMPrune, ctx: RunContext) -> PassResult:
    """N:M (2:4) semi-structured sparsity along each layer's reduction axis, fine-tuned with masks fixed."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    masks, skipped = nm_masks(model, cfg.n, cfg.m, cfg.skip_first)
    apply_masks(model, masks)
    carry = {"keep_nm": {"n": cfg.n, "m": cfg.m, "layers": sorted(masks)}}  # masks kept from now on
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="nm_prune", carry=carry)
    weights = dict(prunable(model))
    notes = {
        "pattern": f"{cfg.n}:{cfg.m}", "layers_nm": sorted(masks), "layers_dense": skipped,
        "pattern_holds": all(is_nm(weights[k], cfg.n, cfg.m) for k in masks),
        "weight_sparsity": round(weight_sparsity(model), 4), "val_accuracy": hist["val_accuracy"],
        "speed_note": "ONNX Runtime CPU has no N:M kernels: expect no latency gain here; sparse tensor "
                      "cores (Ampere+) run 2:4",
    }
    notes.update({**before, **size_counts(model, task.input_shape, "after")})
    return PassResult(model, notes=notes, carry=carry, store_sparse=True)
