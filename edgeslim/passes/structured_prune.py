"""`structured_prune`: physically remove filters, channels and neurons with Torch-Pruning (L1/L2/Taylor/
BN-scale/random importance, one-shot or scheduled), fine-tuning after each round. MACs and ONNX Runtime
latency drop for real (`edgeslim.prune.structured` holds the pruner set-up)."""

from __future__ import annotations

import copy
from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.measure.compare import before_after
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import Schedule
from edgeslim.prune.structured import Importance, accumulate_gradients, channel_counts, make_pruner
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
    measure_batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], description="batch sizes timed before/after")


@register("structured_prune", StructuredPrune)
def structured_prune(model: nn.Module | None, task: Task, cfg: StructuredPrune, ctx: RunContext) -> PassResult:
    """Remove channels/neurons with Torch-Pruning (L1/L2/Taylor/BN-scale/random), fine-tune each round."""
    assert model is not None
    before = copy.deepcopy(model).eval()
    ch_before = channel_counts(model)
    pruner, steps = make_pruner(
        model, task.input_shape, ratio=cfg.ratio, importance=cfg.importance, scope=cfg.scope, schedule=cfg.schedule,
        rounds=cfg.rounds, round_to=cfg.round_to, layer_ratios=cfg.layer_ratios,
    )
    rounds = []
    for i in range(steps):
        if cfg.importance == "taylor":
            accumulate_gradients(model, task, cfg.calibration_batches, seed=ctx.seed + i)
        pruner.step()
        model.zero_grad(set_to_none=True)
        acc_pruned = evaluate(model, task.x_val, task.y_val)
        hist = ctx.finetune_model(model, task, cfg.finetune, desc=f"structured_prune r{i + 1}")
        rounds.append({"val_accuracy_pruned": acc_pruned, "val_accuracy": hist["val_accuracy"],
                       "params": sum(p.numel() for p in model.parameters())})
    ch_after = channel_counts(model)
    notes = {
        "importance": cfg.importance, "val_accuracy": rounds[-1]["val_accuracy"], "rounds": rounds,
        "channels": {n: [ch_before[n], ch_after.get(n)] for n in ch_before},
        "channels_removed_fraction": round(1 - sum(ch_after.values()) / sum(ch_before.values()), 4),
    }
    notes.update(before_after(before, model.eval(), task, tuple(cfg.measure_batches)))
    return PassResult(model, notes=notes)
