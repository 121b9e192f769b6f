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
import time
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
from edgeslim.train import predict, score_outputs

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
                         source: nn.Module | None = None) -> set[str] | None:
    """Remove `ratio` of one layer's output channels (lowest L2 norm) and whatever depends on them. Returns the
    names of the modules it changed, or None when they are not known (the group was pruned on a graph of
    `model` itself).

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
        return set()
    idxs = w.reshape(w.shape[0], -1).norm(dim=1).argsort()[:k].tolist()
    group = dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, idxs=idxs)
    if not dg.check_pruning_group(group):
        return set()
    if source is model:
        group.prune()
        return None
    names = {id(m): n for n, m in source.named_modules()}
    plan = []
    for dep, ix in group:
        target = dep.target.module
        if isinstance(target, nn.Module) and id(target) in names:
            plan.append((names[id(target)], dep.handler, list(ix)))
        elif dep.target.type == tp.ops.OPTYPE.PARAMETER:  # a bare parameter: prune on the copy's own graph
            prune_one_structured(model, layer, ratio, task)
            return None
        # else a graph-only op (concat, split, reshape): its bookkeeping lives in the graph, nothing to prune
    for name, handler, ix in plan:
        handler(model.get_submodule(name), ix)
    return {name for name, _, _ in plan}


CURVE_BATCH = 32  # samples a trial's forward pass takes at once: memory follows it, not the number of samples


def sensitivity_curves(model: nn.Module, task: Task, ratios: list[float], mode: str = "unstructured",
                       max_seconds: float | None = None) -> dict:
    """{"baseline": acc, "layers": [{"layer", "weights", "accuracy": {ratio: acc}}], "seconds", ...} on
    validation data, one trial (a copy with one layer pruned, evaluated in batches of `CURVE_BATCH`) per layer
    and ratio.

    The trials run in an order that keeps the result useful if `max_seconds` (wall seconds for the whole
    analysis, graph and baseline included; None: no limit) runs out: every layer at one ratio first (the
    middle of `ratios`), largest layer (weights) first since it matters most, then the other ratios, each the
    one farthest from those measured (0 included), again largest layer first. A layer with no trial when time
    ran out is listed in `not_measured` (`allocate` gives it 0; `not_measured_weights`: their weight count); a
    layer with some ratios missing keeps only those measured. `seconds`: the analysis' wall time;
    `stopped_by_budget`: whether the budget cut the trials short."""
    t0 = time.perf_counter()
    ref = predict(model, task.x_val, CURVE_BATCH)
    base, out_shape = score_outputs(model, ref, task.x_val, task.y_val), ref.shape
    dg = None
    if mode == "structured":  # one dependency graph for every layer and ratio (each trial prunes a copy)
        import torch_pruning as tp

        with torch_pruning_errors("sensitivity (structured)"):
            dg = tp.DependencyGraph().build_dependency(model, torch.zeros(2, *task.input_shape))
            map_flattened_channels(dg)
    skipped: dict[str, str] = {}
    not_traced, layers = [], []
    for name, n in candidate_layers(model, task, mode, dg, skipped):
        if dg is not None and model.get_submodule(name) not in dg.module2node:
            # not on the traced path (a branch of an If the sample never takes, e.g. silero's 8 kHz branch):
            # pruning it changes nothing the data can show, and the dependency graph has no group for it
            not_traced.append(name)
        else:
            layers.append((name, n))
    by_size = sorted(layers, key=lambda ln: -ln[1])  # stable: equal sizes keep the model's order
    accs: dict[str, dict[str, float]] = {name: {} for name, _ in layers}
    fixed: set[str] = set()
    trials = _Trials(model)
    stopped = False
    for r in _ratio_order(ratios):
        for name, _ in by_size:
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                stopped = True
                break
            trial = trials.get()
            if mode == "structured":
                with torch_pruning_errors(f"sensitivity (structured), layer {name} at {r:g}"):
                    changed = prune_one_structured(trial, name, r, task, dg=dg, source=model)
            else:
                apply_masks(trial, {name: magnitude_masks(trial, r, "layer", {name: r})[name]})
                changed = {name}
            # a layer whose channels are outputs (a detector's head convs, concatenated) changes the output's
            # shape when pruned: it scores 0, so the allocation never prunes it
            got = predict(trial, task.x_val, CURVE_BATCH)
            same = got.shape == out_shape
            accs[name][f"{r:g}"] = score_outputs(trial, got, task.x_val, task.y_val) if same else 0.0
            if not same:
                fixed.add(name)
            trials.done(changed)
        if stopped:
            break
    rows = [{"layer": name, "weights": n, "accuracy": {f"{r:g}": accs[name][f"{r:g}"] for r in ratios
                                                       if f"{r:g}" in accs[name]},
             **({"changes_outputs": True} if name in fixed else {})} for name, n in layers if accs[name]]
    out = {"mode": mode, "baseline": base, "ratios": ratios, "layers": rows,
           "seconds": round(time.perf_counter() - t0, 2), "stopped_by_budget": stopped}
    if max_seconds is not None:
        out["max_seconds"] = max_seconds
    not_measured = [(name, n) for name, n in layers if not accs[name]]
    if not_measured:
        out["not_measured"] = [name for name, _ in not_measured]
        out["not_measured_weights"] = sum(n for _, n in not_measured)  # of sum(weights) over rows + these
    if not_traced:
        out["not_traced"] = not_traced
    if skipped:
        out["skipped"] = skipped
    return out


def _ratio_order(ratios: list[float]) -> list[float]:
    """`ratios` in the order the trials measure them: the middle one, then each time the one farthest from the
    ratios already measured (0 included: the baseline), the larger on a tie."""
    todo = sorted(set(ratios))
    done = [0.0, todo.pop(len(todo) // 2)]
    while todo:
        nxt = max(todo, key=lambda r: (round(min(abs(r - d) for d in done), 9), r))
        todo.remove(nxt)
        done.append(nxt)
    return done[1:]


class _Trials:
    """Unpruned copies of `source`, one per trial, without a deep copy of the whole model each time: one copy is
    made, and after a trial the modules it changed get their state back in place (their `__dict__` from a deep
    copy of `source`'s module of the same name, so every reference to the module object sees it restored).
    A trial whose changed modules are unknown, or include a module with children, gets a fresh whole copy."""

    def __init__(self, source: nn.Module) -> None:
        self.source = source
        self.model: nn.Module | None = None

    def get(self) -> nn.Module:
        """An unpruned copy of `source` for the next trial."""
        if self.model is None:
            self.model = copy.deepcopy(self.source)
        return self.model

    def done(self, changed: set[str] | None) -> None:
        """The trial on the copy is over; `changed`: the modules it changed (None: not known)."""
        if self.model is None:
            return
        if changed is None or any(self.source.get_submodule(n)._modules for n in changed):
            self.model = None  # the next trial copies the whole model again
            return
        for n in changed:
            fresh = copy.deepcopy(self.source.get_submodule(n))
            mod = self.model.get_submodule(n)
            mod.__dict__.clear()
            mod.__dict__.update(fresh.__dict__)


def allocate(curves: dict, target: float, max_ratio: float = 0.95) -> dict[str, float]:
    """Per-layer ratios whose weight-weighted mean reaches `target` while keeping the largest per-layer
    validation-accuracy drop (read off the interpolated, monotone curves) as small as possible.

    Curves cut short by a time budget (`sensitivity_curves(max_seconds=)`): a layer in `not_measured` gets 0
    and its weights are left out of the mean; a layer measured at some ratios only is read as measured, linear
    from no drop at 0 to its first measured ratio and between measured ones, and above its largest measured
    ratio (when that is below the curves' largest) as no better than there and as bad as the worst drop measured
    on any layer, since nothing is known there: the allocation goes past a measured ratio only when every layer
    would have to. Complete curves are read as before (flat past the largest ratio)."""
    not_measured = list(curves.get("not_measured", []))
    if not curves["layers"] and not not_measured:
        why = "; ".join(f"{k}: {v}" for k, v in curves.get("skipped", {}).items())
        raise EdgeslimError("sensitivity: no layer can be pruned" + (f" ({why})" if why else ""))
    grid = np.round(np.arange(0, max_ratio + 1e-9, 0.01), 2)
    drops, sizes, names = [], [], []
    outputs = [row["layer"] for row in curves["layers"] if row.get("changes_outputs")]  # never pruned
    top = max((float(r) for r in curves.get("ratios", [])), default=0.0)
    measured = [row for row in curves["layers"] if not row.get("changes_outputs")]
    worst = max((curves["baseline"] - a for row in measured for a in row["accuracy"].values()), default=0.0)
    for row in measured:
        pts = sorted((float(r), curves["baseline"] - a) for r, a in row["accuracy"].items())
        rs, ds = [0.0] + [r for r, _ in pts], [0.0] + [d for _, d in pts]
        d = np.interp(grid, rs, ds)
        if rs[-1] < top - 1e-9:  # known up to rs[-1] only: past it, the worst drop measured (at least the last)
            d = np.where(grid > rs[-1] + 1e-9, np.maximum(d, worst), d)
        d = np.maximum.accumulate(d)  # a layer never gets easier to prune
        drops.append(d)
        sizes.append(row["weights"])
        names.append(row["layer"])
    if not drops:  # every analysed layer's channels are outputs, or none was measured: nothing to prune
        return dict.fromkeys(outputs + not_measured, 0.0)
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
    return {**{n: round(float(v), 4) for n, v in zip(names, r)}, **dict.fromkeys(outputs + not_measured, 0.0)}


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
        acc = row["accuracy"]
        cells = " | ".join(f"{100 * acc[r]:.1f}" if r in acc else "-" for r in ratios)  # -: not measured in time
        alloc = f" | {allocation[row['layer']]:.2f}" if allocation else ""
        lines.append(f"| {row['layer']} | {row['weights']} | {cells}{alloc} |")
    if curves.get("not_measured"):
        lines += ["", f"Not measured within the {curves.get('max_seconds', 0):g} s budget (no ratio allocated): "
                  + ", ".join(curves["not_measured"])]
    write_text(folder / "sensitivity.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0.0] + [float(r) for r in ratios]
    for row in curves["layers"]:
        pts = [(x, 100 * row["accuracy"][r]) for x, r in zip(xs[1:], ratios) if r in row["accuracy"]]
        ax.plot([0.0] + [x for x, _ in pts], [100 * curves["baseline"]] + [a for _, a in pts], marker="o",
                label=row["layer"])
    ax.set_xlabel(f"pruning ratio ({curves['mode']})")
    ax.set_ylabel("validation accuracy (%)")
    if curves["layers"]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    write_bytes(folder / "sensitivity.png", buf.getvalue())
    return [folder / "sensitivity.md", folder / "sensitivity.json", folder / "sensitivity.png"]
