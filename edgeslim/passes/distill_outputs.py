"""`distill_outputs`: fine-tune the current model to reproduce the run's original model's outputs (MSE on the
teacher's outputs for the same batch: distillation on outputs, labels not used). On a task without labels
(`run --inputs`) this is what every fine-tuning does already; here it gets its own epochs and learning rate.

With `matching`, the distillation is function matching (`distill.matching`): fresh augmented views of the
training inputs every step (noise, shifts, mixup; recorded in the stage's notes), the teacher's outputs on the
same view computed live, intermediate features matched where the student kept the teacher's shapes, and a
budget bounded in steps and seconds. This is what few inputs (64-256) need: the fixed-target fit over-fits them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.distill.matching import Matching, match
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.train import Hooks, TrainConfig, teacher_score


class DistillOutputs(PassConfig):
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5, lr=3e-4),
                               description="the distillation's training settings (without `matching`)")
    matching: Matching | None = Field(None, description="function matching on augmented views, outputs and "
                                      "intermediate features, bounded in steps and seconds (replaces `train`)")


@register("distill_outputs", DistillOutputs)
def distill_outputs(model: nn.Module | None, task: Task, cfg: DistillOutputs, ctx: RunContext) -> PassResult:
    """Distil the original model's outputs into the current one (MSE on outputs; labels not used)."""
    assert model is not None
    teacher = ctx.teacher().eval()
    if cfg.matching is not None:
        rec = match(model, teacher, task, cfg.matching, desc="distill_outputs", quiet=ctx.quiet)
        return PassResult(model, notes={k: v for k, v in rec.items() if k != "history"} | {
            "val_history": rec["history"], "augmented": True, **_bound(model, task)})

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return F.mse_loss(out, target)

    hist = ctx.finetune_model(model, task, cfg.train, desc="distill_outputs", hooks=Hooks(loss=loss))
    return PassResult(model, notes={"val_score": hist["val_accuracy"], "val_split": "val",
                                    "epochs": hist["epochs"], **_bound(model, task)})


def _bound(model: nn.Module, task: Task) -> dict:
    """No labels: which figure bound the kept model's validation score (`train.teacher_score`)."""
    if task.metric != "fidelity":
        return {}
    n = teacher_score(model, task.x_val, task.y_val).notes()
    return {k: n[k] for k in ("val_score_bound", "val_score_mode")}
