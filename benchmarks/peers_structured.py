"""The `structured-fast-resnet8` job of benchmarks/peers.py (issue 27): edgeslim's speed-targeted structured
pruning (`recipes/structured-fast.yaml`: >= 2.2x at batch 1 on ONNX Runtime) beside Torch-Pruning's
MagnitudePruner (its defaults at 50%, the ratio of the `structured-resnet8` job, and at 75%, a uniform cut
aimed at the same speed) and `torch.nn.utils.prune.ln_structured` (50% of the filters zeroed, shapes kept).
The same trained baseline as the other ResNet-8 jobs, and the job's files timed together in one
interleaved loop by the measurement core (peers_measure.measure_job), as every job.

Fine-tuning budget of the peers: what the recipe gives its pick (the full fine-tune plus the screening
fine-tune), at the recipe's learning rate. edgeslim's tool time also covers the candidates it screens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import peers_tools as pt
from peers_measure import Job

from edgeslim import models
from edgeslim.train import TrainConfig

JOB = "structured-fast-resnet8"
RECIPE = "structured-fast"


def budget(recipe: Any) -> TrainConfig:
    """The epochs the recipe's pick is fine-tuned for (the full fine-tune + the screening one), its lr."""
    cfg = recipe.steps[0].config
    ft = getattr(cfg, "finetune", None) or recipe.finetune
    return TrainConfig(epochs=ft.epochs + int(getattr(cfg, "screen_epochs", 0)), lr=ft.lr, seed=0)


def job_structured_fast(ctx: Any, reference_row: Callable[..., Path], edgeslim_row: Callable[..., None],
                        pruned: Callable[..., Any]) -> Job:
    """The job: reference, edgeslim's recipe, the peers. `reference_row`, `edgeslim_row` and `pruned` are
    peers.py's row builders (passed in: peers.py runs as a script and imports this module)."""
    task = ctx.task("digits")
    job = Job(JOB, "structured pruning for speed (structured-fast, >= 2.2x at batch 1), resnet8 on digits",
              "accuracy", task=task)
    base = ctx.baseline("resnet8", "digits")
    net, _ = models.load_model(base)
    (ctx.out / "peers" / JOB).mkdir(parents=True, exist_ok=True)
    reference_row(job, net, task, ctx.out / "peers" / JOB)
    edgeslim_row(ctx, job, RECIPE, base, task)
    ft = budget(ctx.recipe(RECIPE))
    shape = task.input_shape
    for tool, prune in (
        ("Torch-Pruning MagnitudePruner 50% (defaults)", lambda n: pt.tp_magnitude(n, shape, 0.5)),
        ("Torch-Pruning MagnitudePruner 75% (defaults)", lambda n: pt.tp_magnitude(n, shape, 0.75)),
        ("torch.nn.utils.prune ln_structured 50% (L2, filters)", lambda n: pt.torch_ln_structured(n, 0.5)),
    ):
        pruned(ctx, job, tool, base, task, prune, ft)
    return job
