"""`sparsity_train`: train with an L1 / group-lasso / BN-scale (network slimming) penalty before pruning
(`edgeslim.prune.regularizers`). With `persist: true` every later fine-tuning keeps the penalty: the pass
leaves it in the run's carry and `finetune_hooks` re-adds it.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.passes.finetune_hooks import REGULARISER_KEYS
from edgeslim.prune.regularizers import Kind, batchnorms, regulariser, small_fraction
from edgeslim.train import TrainConfig


class SparsityTrain(PassConfig):
    kind: Kind = "bn_l1"
    strength: float = Field(1e-4, gt=0, description="multiplier of the penalty (a sum) added to the loss")
    persist: bool = False  # keep the regulariser in every later fine-tuning
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


@register("sparsity_train", SparsityTrain)
def sparsity_train(model: nn.Module | None, task: Task, cfg: SparsityTrain, ctx: RunContext) -> PassResult:
    """Train with an L1 / group-lasso / BN-scale (network slimming) penalty before pruning."""
    assert model is not None
    if cfg.kind == "bn_l1" and not batchnorms(model):
        raise EdgeslimError("sparsity_train: kind 'bn_l1' needs BatchNorm layers; this model has none "
                            "(use l1 or group_lasso)")
    before = small_fraction(model, cfg.kind)
    # keep the last epoch: the best-validation one is usually an early, less sparse one
    train_cfg = (cfg.finetune or ctx.finetune).model_copy(update={"keep_best": False})
    hist = ctx.finetune_model(model, task, train_cfg, desc=f"sparsity_train {cfg.kind}",
                              hooks=regulariser(cfg.kind, cfg.strength))
    carry = {REGULARISER_KEYS[cfg.kind]: cfg.strength} if cfg.persist else {}
    return PassResult(model, carry=carry, notes={
        "kind": cfg.kind, "strength": cfg.strength, "val_accuracy": hist["val_accuracy"],
        "small_fraction_before": round(before, 4), "small_fraction_after": round(small_fraction(model, cfg.kind), 4),
    })
