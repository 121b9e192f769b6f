"""`depth_prune`: remove whole shape-preserving blocks (greedy, least validation-accuracy loss first), then
fine-tune. Each removal is a replayable spec edit (`identity`)."""

from __future__ import annotations

import copy

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import size_counts
from edgeslim.models.spec import add_edit, set_module
from edgeslim.passes.base import ZOO_ONLY, PassConfig, PassResult, RunContext, register
from edgeslim.prune.structured import removable_blocks
from edgeslim.train import TrainConfig, evaluate


class DepthPrune(PassConfig):
    blocks: int = Field(1, ge=1, description="number of whole blocks to remove")
    finetune: TrainConfig | None = None


@register("depth_prune", DepthPrune, kinds=ZOO_ONLY)
def depth_prune(model: nn.Module | None, task: Task, cfg: DepthPrune, ctx: RunContext) -> PassResult:
    """Remove whole blocks (greedy, least validation-accuracy loss first), then fine-tune."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    spec, removed, trail = ctx.spec, [], []
    for _ in range(cfg.blocks):
        cands = removable_blocks(model, task.input_shape)
        if not cands:
            break
        scores = {}
        for n in cands:  # try each removal on a copy; keep the one that hurts validation accuracy least
            trial = copy.deepcopy(model)
            set_module(trial, n, nn.Identity())
            scores[n] = evaluate(trial, task.x_val, task.y_val)
        best = max(scores, key=lambda k: scores[k])
        set_module(model, best, nn.Identity())
        spec = add_edit(spec, "identity", module=best)
        removed.append(best)
        trail.append({"block": best, "val_accuracy_without": scores[best]})
    if len(removed) < cfg.blocks:
        raise EdgeslimError(
            f"depth_prune: asked to remove {cfg.blocks} blocks but this model has only {len(removed)} "
            "removable (shape-preserving) blocks"
        )
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="depth_prune")
    notes = {"removed": removed, "trail": trail, "val_accuracy": hist["val_accuracy"]}
    notes.update({**before, **size_counts(model, task.input_shape, "after")})
    return PassResult(model, spec=spec, notes=notes)
