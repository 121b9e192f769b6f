"""`magnitude_prune`: unstructured magnitude pruning (global, per layer or LAMP) with masks that survive
fine-tuning. Every stage reports both sizes: `size_bytes` (the dense ONNX as stored) and
`size_bytes_compressed` (its sparse encoding, `edgeslim.formats.sparse`); the stage also keeps
`model.sparse.npz`, the file that figure counts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import Schedule, apply_masks, magnitude_masks, schedule_ratios, weight_sparsity
from edgeslim.train import TrainConfig


class MagnitudePrune(PassConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of prunable weights set to zero")
    # global: one magnitude threshold for all layers; layer: the same sparsity in every layer; lamp: one
    # threshold on LAMP scores (Lee et al. 2021), global ranking that does not empty a whole layer
    scope: Literal["global", "layer", "lamp"] = "global"
    schedule: Schedule = "oneshot"  # oneshot: one round; linear/cubic (Zhu & Gupta 2017) over `rounds`
    rounds: int = Field(1, ge=1, le=50, description="prune + fine-tune rounds for linear/cubic schedules")
    finetune: TrainConfig | None = None  # per round; default: the recipe's finetune block


@register("magnitude_prune", MagnitudePrune)
def magnitude_prune(model: nn.Module | None, task: Task, cfg: MagnitudePrune, ctx: RunContext) -> PassResult:
    """Zero the smallest-magnitude weights to a target sparsity (one-shot or scheduled rounds), fine-tuning
    with masks fixed after each round."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    carry = {"keep_sparsity": True}  # masks fixed in this pass's fine-tuning and in every later one
    rounds = []
    for i, s in enumerate(schedule_ratios(cfg.sparsity, cfg.rounds, cfg.schedule)):
        apply_masks(model, magnitude_masks(model, s, cfg.scope))
        hist = ctx.finetune_model(model, task, cfg.finetune, desc=f"magnitude_prune r{i + 1}", carry=carry)
        rounds.append({"target_sparsity": round(s, 4), "sparsity": round(weight_sparsity(model), 4),
                       "val_accuracy": hist["val_accuracy"]})
    notes = {"val_accuracy": rounds[-1]["val_accuracy"], "weight_sparsity": rounds[-1]["sparsity"],
             "rounds": rounds}
    notes.update({**before, **size_counts(model, task.input_shape, "after")})
    return PassResult(model, notes=notes, carry=carry, store_sparse=True)
