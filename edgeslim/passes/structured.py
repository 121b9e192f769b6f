"""Structured pruning: physically remove filters, channels and neurons, and whole blocks (depth).

Torch-Pruning's dependency graph decides what must be pruned together (residual adds, depthwise convs,
concatenations, BatchNorm, the flatten into a classifier, attention head dims and FFN neurons of
transformer blocks; removing whole attention heads is not exposed); we only choose the importance
criterion and the schedule, and fine-tune. The pruned model is a smaller dense model: its MACs and ONNX Runtime
latency drop for real. Its spec needs no edit: `fit_to_state_dict` resizes layers to the stored shapes.
Depth pruning replaces whole shape-preserving blocks by identity, recorded as a replayable spec edit.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError, choices
from edgeslim.models.probe import probe
from edgeslim.models.spec import add_edit, get_module, set_module
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.passes.prune import Schedule, before_after, schedule_ratios
from edgeslim.train import TrainConfig, evaluate, is_reconstruction

Importance = Literal["l1", "l2", "taylor", "bn_scale", "random"]


class StructuredPrune(PassConfig):
    ratio: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of channels removed from each group")
    importance: Importance = "l2"
    scope: Literal["layer", "global"] = "layer"  # global: ranks channels across layers (uneven ratios)
    schedule: Schedule = "oneshot"
    rounds: int = Field(1, ge=1, le=50)
    calibration_batches: int = Field(4, ge=1, description="batches of training data for Taylor gradients")
    round_to: int | None = Field(None, ge=1, description="keep channel counts a multiple of this")
    layer_ratios: dict[str, float] | None = None  # module path -> ratio (e.g. from sensitivity analysis)
    finetune: TrainConfig | None = None  # per round; default: the recipe's finetune block
    measure_batches: list[int] = Field(default_factory=lambda: [1], description="batch sizes timed before/after")


def make_importance(name: str):  # -> tp.importance.Importance
    import torch_pruning as tp

    table = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.TaylorImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if name not in table:
        raise EdgeslimError(f"unknown importance '{name}'; valid: {choices(list(table))}")
    return table[name]()


def output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The Conv/Linear layer that runs last produces the model's output: its out-features are fixed."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: order.append(m))
        for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    probe(model, torch.zeros(2, *input_shape), hooks)
    if not order:
        raise EdgeslimError("structured pruning needs a model with Conv or Linear layers")
    return [order[-1]]


def model_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers a model says channel pruning must keep whole (`prune_ignored()`), e.g. the zoo transformer's
    residual stream and attention heads, which a dependency graph cannot follow through the head reshape."""
    fn = getattr(model, "prune_ignored", None)
    return list(fn()) if callable(fn) else []


def accumulate_gradients(model: nn.Module, task: Task, batches: int, batch_size: int = 64, seed: int = 0) -> None:
    """Loss gradients on a few training batches (Taylor importance = |weight x gradient|)."""
    model.eval()  # BN statistics stay fixed; gradients still flow
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        idx = rng.choice(len(task.x_train), min(batch_size, len(task.x_train)), replace=False)
        x, y = torch.from_numpy(task.x_train[idx]), torch.from_numpy(task.y_train[idx])
        out = model(x)
        loss = F.mse_loss(out, x) if is_reconstruction(model) else F.cross_entropy(out, y)
        loss.backward()


def make_pruner(model: nn.Module, task: Task, cfg: StructuredPrune) -> tuple:  # (MetaPruner, steps)
    import torch_pruning as tp

    if cfg.importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                for m in model.modules()):
        raise EdgeslimError("structured_prune: importance 'bn_scale' needs BatchNorm layers; this model has "
                            "none (use l1, l2, taylor or random)")
    ratio_dict = None
    if cfg.layer_ratios:
        names = dict(model.named_modules())
        bad = [k for k in cfg.layer_ratios if k not in names]
        if bad:
            raise EdgeslimError(f"structured_prune: layer_ratios names unknown modules {bad}; valid: "
                                f"{choices([n for n, _ in model.named_modules() if n])}")
        ratio_dict = {names[k]: v for k, v in cfg.layer_ratios.items() if v > 0}
    steps = 1 if cfg.schedule == "oneshot" else cfg.rounds

    def scheduler(ratio: float, n: int) -> list[float]:
        return [0.0] + schedule_ratios(ratio, n, cfg.schedule)

    return tp.pruner.MetaPruner(
        model, torch.zeros(2, *task.input_shape), make_importance(cfg.importance),
        global_pruning=cfg.scope == "global", pruning_ratio=cfg.ratio, pruning_ratio_dict=ratio_dict,
        iterative_steps=steps, iterative_pruning_ratio_scheduler=scheduler,
        ignored_layers=output_layers(model, task.input_shape) + model_ignored(model), round_to=cfg.round_to,
    ), steps


def channel_counts(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}


@register("structured_prune", StructuredPrune)
def structured_prune(model: nn.Module | None, task: Task, cfg: StructuredPrune, ctx: RunContext) -> PassResult:
    """Remove channels/neurons with Torch-Pruning (L1/L2/Taylor/BN-scale/random), fine-tune each round."""
    assert model is not None
    before = copy.deepcopy(model).eval()
    ch_before = channel_counts(model)
    pruner, steps = make_pruner(model, task, cfg)
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


# --- depth pruning ---------------------------------------------------------------------------------------


class DepthPrune(PassConfig):
    blocks: int = Field(1, ge=1, description="number of whole blocks to remove")
    finetune: TrainConfig | None = None


def removable_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Blocks that can become identity: sub-modules with >= 2 Conv/Linear layers whose output shape equals
    their input shape (residual blocks with an identity shortcut, stride-1 same-width blocks); the
    innermost such modules only."""
    shapes: dict[str, tuple] = {}

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and inp and isinstance(inp[0], torch.Tensor):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
        return fn

    def n_layers(m: nn.Module) -> int:
        return sum(isinstance(s, (nn.Linear, nn.modules.conv._ConvNd)) for s in m.modules())

    cands = [n for n, m in model.named_modules() if n and n_layers(m) >= 2]
    hs = [get_module(model, n).register_forward_hook(hook(n)) for n in cands]
    probe(model, torch.zeros(2, *input_shape), hs)
    ok = [n for n in cands if n in shapes and shapes[n][0] == shapes[n][1]]
    return [n for n in ok if not any(o != n and o.startswith(n + ".") for o in ok)]


@register("depth_prune", DepthPrune)
def depth_prune(model: nn.Module | None, task: Task, cfg: DepthPrune, ctx: RunContext) -> PassResult:
    """Remove whole blocks (greedy, least validation-accuracy loss first), then fine-tune."""
    assert model is not None
    before = copy.deepcopy(model).eval()
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
    notes.update(before_after(before, model.eval(), task))
    return PassResult(model, spec=spec, notes=notes)
