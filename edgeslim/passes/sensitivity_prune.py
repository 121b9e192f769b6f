"""`sensitivity_prune`: per-layer sensitivity curves -> per-layer ratios under a global target -> prune
(unstructured: magnitude masks kept in later fine-tuning; structured: Torch-Pruning) -> fine-tune. The
curves and the allocation come from `edgeslim.prune.sensitivity`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import apply_masks, magnitude_masks, weight_sparsity
from edgeslim.prune.sensitivity import DEFAULT_RATIOS, Mode, allocate, sensitivity_curves, write_report
from edgeslim.prune.structured import make_pruner
from edgeslim.prune.unsupported import guarded
from edgeslim.train import TrainConfig


class SensitivityPrune(PassConfig):
    target: float = Field(0.5, gt=0, lt=1, description="weight-weighted mean of the per-layer ratios")
    mode: Mode = "unstructured"
    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: list(DEFAULT_RATIOS), min_length=1)
    max_ratio: float = Field(0.95, gt=0, lt=1)
    finetune: TrainConfig | None = None


@register("sensitivity_prune", SensitivityPrune)
@guarded("sensitivity_prune")
def sensitivity_prune(model: nn.Module | None, task: Task, cfg: SensitivityPrune, ctx: RunContext) -> PassResult:
    """Per-layer sensitivity curves -> per-layer ratios under a global target -> prune -> fine-tune."""
    assert model is not None
    if any(not 0 < r < 1 for r in cfg.ratios):
        raise EdgeslimError(f"sensitivity_prune: ratios must lie in (0, 1), got {cfg.ratios}")
    curves = sensitivity_curves(model, task, sorted(cfg.ratios), cfg.mode)
    alloc = allocate(curves, cfg.target, cfg.max_ratio)
    write_report(ctx.stage_dir, curves, alloc)
    notes: dict = {"mode": cfg.mode, "allocation": alloc, "report": "sensitivity.md"}
    if cfg.mode == "unstructured":
        apply_masks(model, magnitude_masks(model, 0.0, "layer", alloc))
        carry = {"keep_sparsity": True}
        hist = ctx.finetune_model(model, task, cfg.finetune, desc="sensitivity_prune", carry=carry)
        notes.update(weight_sparsity=round(weight_sparsity(model), 4), val_accuracy=hist["val_accuracy"])
        return PassResult(model, notes=notes, carry=carry, store_sparse=True)
    before = size_counts(model, task.input_shape, "before")
    pruner, _ = make_pruner(model, task.input_shape, ratio=0.5, importance="l2",
                            layer_ratios={k: min(v, 0.95) for k, v in alloc.items()})
    pruner.step()
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="sensitivity_prune")
    notes.update(val_accuracy=hist["val_accuracy"])
    notes.update({**before, **size_counts(model, task.input_shape, "after")})
    return PassResult(model, notes=notes)
