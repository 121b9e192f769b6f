"""Sensitivity analysis: validation accuracy when one layer at a time is pruned to each ratio, written as a
table (Markdown + JSON) and a plot; and per-layer ratios allocated from those curves under a global target
(layers that tolerate pruning get more of it). Used by `edgeslim sensitivity`, the `sensitivity_prune` pass
and the search's guided start.

Modes: `unstructured` (fraction of the layer's weights zeroed by magnitude) and `structured` (fraction
of the layer's output channels removed by L2 norm, with Torch-Pruning handling coupled layers).
Accuracies are fractions 0-1 on the task's validation split; the test split is never used to choose.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes, write_json, write_text
from edgeslim.prune.masks import apply_masks, magnitude_masks, prunable
from edgeslim.prune.structured import (
    blocked_by,
    map_flattened_channels,
    model_ignored,
    output_layers,
    torch_pruning_errors,
)
from edgeslim.train import evaluate

Mode = Literal["unstructured", "structured"]
DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def candidate_layers(model: nn.Module, task: Task, mode: str, dg=None,
                     skipped: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """(layer name, weight count) of the layers analysed; structured mode skips the output layer, the layers
    the model keeps whole (`prune_ignored()`: the final pruner ignores them, so a ratio allocated to them would
    never be applied, and a trial on them may meet what the dependency graph cannot follow), and the layers
    whose channel group reaches a kept layer's output channels (`structured.blocked_by`: the final pruner skips
    that group). `dg`: Torch-Pruning's dependency graph of `model` (built here when None); `skipped`, when
    given, receives {layer: why} for the layers skipped by the group rule."""
    if mode != "structured":
        return [(n, w.numel()) for n, w in prunable(model)]
    kept = output_layers(model, task.input_shape) + model_ignored(model)
    skip = {id(m) for m in kept}
    mods = dict(model.named_modules())
    if dg is None:
        import torch_pruning as tp

        with torch_pruning_errors("sensitivity (structured)"):
            dg = tp.DependencyGraph().build_dependency(model, torch.zeros(2, *task.input_shape))
            map_flattened_channels(dg)
    out = []
    for n, w in prunable(model):
        if id(mods[n]) in skip:
            continue
        if mods[n] not in dg.module2node:  # off the traced path: `sensitivity_curves` lists it as not traced
            out.append((n, w.numel()))
            continue
        with torch_pruning_errors(f"sensitivity (structured), layer {n}"):
            why = blocked_by(dg, mods[n], kept)
        if why is not None:
            if skipped is not None:
                skipped[n] = why
            continue
        out.append((n, w.numel()))
    return out


def prune_one_structured(model: nn.Module, layer: str, ratio: float, task: Task, dg=None,
                         source: nn.Module | None = None) -> None:
    """Remove `ratio` of one layer's output channels (lowest L2 norm) and whatever depends on them.

    `dg`: Torch-Pruning's dependency graph of `source`, of which `model` is an unpruned copy (built once for many
    trials: tracing a real model for every layer and ratio is what makes sensitivity slow); the group is found on
    `source`'s graph and the same pruning functions, on the same indices, are applied to `model`'s layers by
    name. Without it a graph of `model` is built."""
    import torch_pruning as tp

    if dg is None or source is None:
        dg, source = tp.DependencyGraph().build_dependency(model, torch.zeros(2, *task.input_shape)), model
        map_flattened_channels(dg)
    mod = source.get_submodule(layer)
    w = mod.get_parameter("weight").detach()
    k = int(ratio * w.shape[0])
    if k <= 0 or k >= w.shape[0]:
        return
    idxs = w.reshape(w.shape[0], -1).norm(dim=1).argsort()[:k].tolist()
    group = dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, idxs=idxs)
    if not dg.check_pruning_group(group):
        return
    if source is model:
        group.prune()
        return
    names = {id(m): n for n, m in source.named_modules()}
    plan = []
    for dep, ix in group:
        target = dep.target.module
        if isinstance(target, nn.Module) and id(target) in names:
            plan.append((names[id(target)], dep.handler, list(ix)))
        elif dep.target.type == tp.ops.OPTYPE.PARAMETER:  # a bare parameter: prune on the copy's own graph
            prune_one_structured(model, layer, ratio, task)
            return
        # else a graph-only op (concat, split, reshape): its bookkeeping lives in the graph, nothing to prune
    for name, handler, ix in plan:
        handler(model.get_submodule(name), ix)


def sensitivity_curves(model: nn.Module, task: Task, ratios: list[float], mode: str = "unstructured") -> dict:
    """{"baseline": acc, "layers": [{"layer", "weights", "accuracy": {ratio: acc}}]} on validation data."""
    base = evaluate(model, task.x_val, task.y_val)
    out_shape = _out_shape(model, task)
    rows = []
    dg = None
    if mode == "structured":  # one dependency graph for every layer and ratio (each trial prunes a copy)
        import torch_pruning as tp

        with torch_pruning_errors("sensitivity (structured)"):
            dg = tp.DependencyGraph().build_dependency(model, torch.zeros(2, *task.input_shape))
            map_flattened_channels(dg)
    skipped: dict[str, str] = {}
    not_traced = []
    for name, n in candidate_layers(model, task, mode, dg, skipped):
        if dg is not None and model.get_submodule(name) not in dg.module2node:
            # not on the traced path (a branch of an If the sample never takes, e.g. silero's 8 kHz branch):
            # pruning it changes nothing the data can show, and the dependency graph has no group for it
            not_traced.append(name)
            continue
        accs = {}
        fixed = False
        for r in ratios:
            trial = copy.deepcopy(model)
            if mode == "structured":
                with torch_pruning_errors(f"sensitivity (structured), layer {name} at {r:g}"):
                    prune_one_structured(trial, name, r, task, dg=dg, source=model)
            else:
                apply_masks(trial, {name: magnitude_masks(trial, r, "layer", {name: r})[name]})
            # a layer whose channels are outputs (a detector's head convs, concatenated) changes the output's
            # shape when pruned: it scores 0, so the allocation never prunes it
            same = _out_shape(trial, task) == out_shape
            accs[f"{r:g}"] = evaluate(trial, task.x_val, task.y_val) if same else 0.0
            fixed = fixed or not same
        rows.append({"layer": name, "weights": n, "accuracy": accs, **({"changes_outputs": True} if fixed else {})})
    out = {"mode": mode, "baseline": base, "ratios": ratios, "layers": rows}
    if not_traced:
        out["not_traced"] = not_traced
    if skipped:
        out["skipped"] = skipped
    return out


def _out_shape(model: nn.Module, task: Task) -> tuple[int, ...]:
    """The model's output shape on two validation samples."""
    with torch.no_grad():
        return tuple(model.eval()(torch.from_numpy(task.x_val[:2])).shape)


def allocate(curves: dict, target: float, max_ratio: float = 0.95) -> dict[str, float]:
    """Per-layer ratios whose weight-weighted mean reaches `target` while keeping the largest per-layer
    validation-accuracy drop (read off the interpolated, monotone curves) as small as possible."""
    if not curves["layers"]:
        why = "; ".join(f"{k}: {v}" for k, v in curves.get("skipped", {}).items())
        raise EdgeslimError("sensitivity: no layer can be pruned" + (f" ({why})" if why else ""))
    grid = np.round(np.arange(0, max_ratio + 1e-9, 0.01), 2)
    drops, sizes, names = [], [], []
    outputs = [row["layer"] for row in curves["layers"] if row.get("changes_outputs")]  # never pruned
    for row in curves["layers"]:
        if row.get("changes_outputs"):
            continue
        rs = [0.0] + [float(r) for r in row["accuracy"]]
        ds = [0.0] + [curves["baseline"] - a for a in row["accuracy"].values()]
        d = np.maximum.accumulate(np.interp(grid, rs, ds))  # a layer never gets easier to prune
        drops.append(d)
        sizes.append(row["weights"])
        names.append(row["layer"])
    if not drops:  # every analysed layer's channels are outputs: nothing to prune
        return dict.fromkeys(outputs, 0.0)
    size = np.asarray(sizes, float)

    def ratios_at(tol: float) -> np.ndarray:
        return np.asarray([grid[np.nonzero(d <= tol + 1e-12)[0].max()] for d in drops])

    hi = max(float(d.max()) for d in drops)
    if float((ratios_at(hi) * size).sum() / size.sum()) < target - 1e-9:
        raise EdgeslimError(f"sensitivity: target {target} is above what per-layer ratios up to {max_ratio} "
                            "reach; lower the target or raise max_ratio")
    lo = 0.0
    for _ in range(40):  # bisection on the tolerated drop
        mid = (lo + hi) / 2
        if float((ratios_at(mid) * size).sum() / size.sum()) >= target:
            hi = mid
        else:
            lo = mid
    r = ratios_at(hi)
    overall = float((r * size).sum() / size.sum())
    if overall > target:  # layers that lose nothing up to max_ratio overshoot: scale back to the target
        r = r * (target / overall)
    return {**{n: round(float(v), 4) for n, v in zip(names, r)}, **dict.fromkeys(outputs, 0.0)}


def write_report(folder: Path, curves: dict, allocation: dict[str, float] | None = None) -> list[Path]:
    """sensitivity.json, sensitivity.md (layers x ratios table) and sensitivity.png (one curve a layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    data = {**curves, **({"allocation": allocation} if allocation else {})}
    write_json(folder / "sensitivity.json", data)
    ratios = [f"{r:g}" for r in curves["ratios"]]
    lines = [f"# Sensitivity ({curves['mode']}): validation accuracy (%) with one layer pruned",
             "", f"Baseline: {100 * curves['baseline']:.2f}%", "",
             "| layer | weights | " + " | ".join(ratios) + (" | allocated |" if allocation else " |"),
             "|---|---:|" + "---:|" * (len(ratios) + (1 if allocation else 0))]
    for row in curves["layers"]:
        cells = " | ".join(f"{100 * row['accuracy'][r]:.1f}" for r in ratios)
        alloc = f" | {allocation[row['layer']]:.2f}" if allocation else ""
        lines.append(f"| {row['layer']} | {row['weights']} | {cells}{alloc} |")
    write_text(folder / "sensitivity.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0.0] + [float(r) for r in ratios]
    for row in curves["layers"]:
        ax.plot(xs, [100 * curves["baseline"]] + [100 * row["accuracy"][r] for r in ratios], marker="o",
                label=row["layer"])
    ax.set_xlabel(f"pruning ratio ({curves['mode']})")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    write_bytes(folder / "sensitivity.png", buf.getvalue())
    return [folder / "sensitivity.md", folder / "sensitivity.json", folder / "sensitivity.png"]
