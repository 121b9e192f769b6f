"""`variational_prune`: sparsity learnt, not chosen. Sparse variational dropout (Molchanov, Ashukha &
Vetrov 2017, "Variational Dropout Sparsifies Deep Neural Networks"; `edgeslim.prune.variational`) trains
a log sigma^2 per Linear/Conv weight under the log-uniform prior, the KL term's weight warmed up from 0;
weights whose log alpha ends above `threshold` are dropped. The masks are then kept (`keep_sparsity` in
the run's carry) by this pass's fine-tuning and by every later pass, and the bit width each layer's
posterior allows (`posterior_bits`) goes to the carry too, for `posterior_code`.

With `distill`, the variational training, the masked fine-tuning and every later fine-tuning of the run
(`posterior_code`'s centroids) learn from the run's baseline by logit KD (Hinton et al. 2015) instead of
the labels alone: on a small training set the dense model's soft targets carry what the sparse one loses.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeslim.data import Task
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import weight_sparsity
from edgeslim.prune.variational import attach, detach, layer_sparsity, posterior_bits, total_kl
from edgeslim.train import Hooks, TrainConfig, evaluate


class VariationalKD(BaseModel):
    """Logit KD from the run's baseline: loss = alpha x T^2 x KL(teacher(T) || student(T)) + (1 - alpha) x CE."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)


class VariationalPrune(PassConfig):
    kl_weight: float = Field(1.0, gt=0, description="multiplier of the KL term (per training sample); 1 is the "
                             "variational lower bound, more drops more weights")
    warmup: float = Field(0.5, ge=0, le=1, description="fraction of the training steps over which the KL "
                          "weight grows linearly from 0 to kl_weight")
    threshold: float = Field(3.0, description="drop a weight when its log alpha = log sigma^2/theta^2 exceeds this")
    target_sparsity: float | None = Field(None, gt=0, lt=1, description="if the learnt sparsity falls short, "
                                          "also drop the weights of highest log alpha up to this fraction")
    init_log_sigma2: float = -10.0
    skip: list[str] | None = None  # layer names left dense (default: none)
    step_scale: float = Field(1.0, gt=0, description="grid step per layer = this x the mean posterior std of "
                              "its surviving weights (posterior_bits)")
    max_bits: int = Field(8, ge=1, le=8)
    finetune: TrainConfig | None = None  # the variational training (default: the recipe's finetune block)
    masked_finetune: TrainConfig | None = None  # after the masks are fixed (default: none, epochs 0)
    distill: VariationalKD | None = None  # KD from the baseline here and in every later fine-tuning (default: off)


def _top_alpha_masks(wrapped: dict, target: float) -> None:
    """Lower every layer's threshold so that at least `target` of all wrapped weights are dropped, ranked
    by log alpha (the learnt, not the magnitude, order)."""
    las = torch.cat([w.log_alpha().detach().flatten() for w in wrapped.values()])
    k = int(round((1 - target) * las.numel()))  # weights kept
    thr = float(las.sort().values[max(0, k - 1)]) if k > 0 else -float("inf")
    for w in wrapped.values():
        w.threshold = min(w.threshold, thr)


@register("variational_prune", VariationalPrune)
def variational_prune(model: nn.Module | None, task: Task, cfg: VariationalPrune, ctx: RunContext) -> PassResult:
    """Learn which weights to drop by sparse variational dropout (Molchanov et al. 2017); masks are kept."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    acc0 = evaluate(model, task.x_val, task.y_val)
    wrapped = attach(model, cfg.threshold, cfg.skip, cfg.init_log_sigma2)
    train_cfg = (cfg.finetune or ctx.finetune).model_copy(update={"keep_best": False})  # later = sparser
    steps = train_cfg.epochs * -(-len(task.x_train) // train_cfg.batch_size)
    state: dict[str, Any] = {"step": 0, "beta": 0.0 if cfg.warmup > 0 else cfg.kl_weight}
    n = len(task.x_train)

    def kl_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return state["beta"] * total_kl(wrapped) / n  # the ELBO per training sample

    def warm(_: nn.Module) -> None:
        state["step"] += 1
        ramp = state["step"] / max(1.0, cfg.warmup * steps) if cfg.warmup > 0 else 1.0
        state["beta"] = cfg.kl_weight * min(1.0, ramp)

    kd: dict[str, Any] = {} if cfg.distill is None else {"distill": {
        "temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha, "teachers": [], "cache": True,
        "task": task.name, "input_shape": list(task.input_shape), "n_train": len(task.x_train)}}
    hist = ctx.finetune_model(model, task, train_cfg, desc="variational_prune",
                              hooks=Hooks(extra_losses=[kl_loss], after_step=[warm]), carry=kd)
    learnt = layer_sparsity(wrapped)
    if cfg.target_sparsity is not None:
        _top_alpha_masks(wrapped, cfg.target_sparsity)
    model.eval()
    acc_masked = evaluate(model, task.x_val, task.y_val)
    sigmas = detach(model, wrapped)
    carry: dict[str, Any] = {"keep_sparsity": True, **kd}
    acc_ft = acc_masked
    if cfg.masked_finetune is not None and cfg.masked_finetune.epochs > 0:
        acc_ft = ctx.finetune_model(model, task, cfg.masked_finetune, desc="variational_prune masked",
                                    carry=carry)["val_accuracy"]
    mods = dict(model.named_modules())
    bits = {name: posterior_bits(mods[name].weight.detach(), sigmas[name], cfg.step_scale, 1, cfg.max_bits)
            for name in wrapped}
    layers = {}
    for name in wrapped:
        w = mods[name].weight.detach()
        rows = (w.flatten(1) != 0).any(1)
        layers[name] = {"weights": w.numel(), "kept": int((w != 0).sum()),
                        "sparsity": round(1 - float((w != 0).float().mean()), 4), "learnt_sparsity": learnt[name],
                        "units_kept": f"{int(rows.sum())}/{rows.numel()}", "posterior_bits": bits[name]}
    carry["posterior_bits"] = bits
    notes = {"val_accuracy_before": acc0, "val_accuracy_vd": hist["val_accuracy"], "val_accuracy_masked": acc_masked,
             "val_accuracy": acc_ft, "val_curve_vd": [round(h["val"], 4) for h in hist.get("history", [])],
             "weight_sparsity": round(weight_sparsity(model), 4), "layers": layers,
             **before, **size_counts(model, task.input_shape, "after")}
    if not ctx.quiet:
        for name, s in layers.items():
            print(f"[variational_prune] {name}: kept {s['kept']:,}/{s['weights']:,} weights "
                  f"({100 * (1 - s['sparsity']):.2f}%), units {s['units_kept']}, {s['posterior_bits']} bits "
                  "from the posterior", flush=True)
    return PassResult(model, notes=notes, carry=carry, store_sparse=True)
