"""`structured_prune`: physically remove filters, channels and neurons with Torch-Pruning (L1/L2/Taylor/
BN-scale/random importance, one-shot or scheduled), fine-tuning after each round. MACs and ONNX Runtime
latency drop for real (`edgeslim.prune.structured` holds the pruner set-up)."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from torch import nn

from edgeslim.data import Task
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import Schedule
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct, summary
from edgeslim.prune.structured import Importance, accumulate_gradients, channel_counts, make_pruner
from edgeslim.prune.unsupported import guarded
from edgeslim.train import TrainConfig, evaluate


class StructuredPrune(PassConfig):
    ratio: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of channels removed from each group")
    importance: Importance = "l2"
    scope: Literal["layer", "global"] = "layer"  # global: ranks channels across layers (uneven ratios)
    schedule: Schedule = "oneshot"
    rounds: int = Field(1, ge=1, le=50)
    calibration_batches: int = Field(4, ge=1, description="batches of training data for Taylor gradients")
    round_to: int | None = Field(None, ge=1, description="keep channel counts a multiple of this")
    layer_ratios: dict[str, Annotated[float, Field(ge=0, lt=1)]] | None = None  # module path -> ratio (e.g. from sensitivity analysis)
    finetune: TrainConfig | None = None  # per round; default: the recipe's finetune block
    reconstruct: Reconstruct | None = Field(None, description="after each round, refit the dense layers to the "
                                            "unpruned layers' outputs on training inputs (least squares, no labels)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "measure_batches" in data:
            raise ValueError("'measure_batches' moved to the recipe's top level: `measure: {batches: [1, 64]}` times "
                             "every stage at those batch sizes, interleaved, at the end of the run")
        return data


@register("structured_prune", StructuredPrune)
@guarded("structured_prune")
def structured_prune(model: nn.Module | None, task: Task, cfg: StructuredPrune, ctx: RunContext) -> PassResult:
    """Remove channels/neurons with Torch-Pruning (L1/L2/Taylor/BN-scale/random), fine-tune each round."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    ch_before = channel_counts(model)
    pruner, steps = make_pruner(
        model, task.input_shape, ratio=cfg.ratio, importance=cfg.importance, scope=cfg.scope, schedule=cfg.schedule,
        rounds=cfg.rounds, round_to=cfg.round_to, layer_ratios=cfg.layer_ratios,
    )
    rounds = []
    for i in range(steps):
        if cfg.importance == "taylor":
            accumulate_gradients(model, task, cfg.calibration_batches, seed=ctx.seed + i)
        rc = cfg.reconstruct
        unpruned = copy.deepcopy(model) if rc is not None else None
        kept = prune_recording(pruner, model) if rc is not None else pruner.step()
        model.zero_grad(set_to_none=True)
        acc_pruned = evaluate(model, task.x_val, task.y_val)
        row: dict[str, Any] = {"val_accuracy_pruned": acc_pruned}
        if rc is not None and unpruned is not None:
            rec = reconstruct(model, unpruned, kept, task.x_train, rc, seed=ctx.seed)
            row["reconstruction"] = summary(rec) | {
                "val_accuracy": evaluate(model, task.x_val, task.y_val)}
            del unpruned
        hist = ctx.finetune_model(model, task, cfg.finetune, desc=f"structured_prune r{i + 1}")
        rounds.append({**row, "val_accuracy": hist["val_accuracy"], "params": sum(p.numel() for p in model.parameters())})
    ch_after = channel_counts(model)
    notes = {
        "importance": cfg.importance, "val_accuracy": rounds[-1]["val_accuracy"], "rounds": rounds,
        "channels": {n: [ch_before[n], ch_after.get(n)] for n in ch_before},
        "channels_removed_fraction": round(1 - sum(ch_after.values()) / sum(ch_before.values()), 4),
    }
    notes.update({**before, **size_counts(model, task.input_shape, "after")})
    return PassResult(model, notes=notes)
