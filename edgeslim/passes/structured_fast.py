"""`structured_fast`: structured pruning aimed at a *measured* speed-up at batch 1 on ONNX Runtime's CPU path,
not at a ratio (issue 27).

    probe   ORT conv latency vs channel count per output size, interleaved (prune.channel_multiples): the
            staircase; only counts on the fast side of a step are used
    ladder  candidate architectures: 0..k whole shape-preserving blocks removed (the one that costs least
            validation accuracy first) x a channel ratio per layer class (width, output size: the
            layers a residual add joins are of one class), each rounded down to a fast count; Torch-Pruning's dependency graph prunes residual
            groups together; candidates with the same channel counts are built once
    time    every candidate exported and timed against the unpruned export in one interleaved loop
            (`ctx.measure`: the measurement core; timing does not depend on the weights, so this happens
            before any fine-tuning)
    pick    the candidates that reach `target_speedup` (+ `speed_margin`, so that the run's own timing at
            its end still finds the target), least pruned first, get a short fine-tune (`screen_epochs`)
            and the `tries` best on validation are fine-tuned in full with logit
            distillation from the unpruned model (the run's baseline), the best on the validation split
            is kept; if none reaches the target, the fastest is, and the notes say so
    judge   "best on validation" (`rank`): accuracy first, but accuracies within `tie_samples` validation
            samples (or one standard error of a difference) of the best are a tie (a small split saturates: most candidates reach 100%), broken by
            the distillation divergence from the teacher on the validation inputs (KL at the KD
            temperature: every class's probability counts, so it does not saturate); each fine-tune keeps
            its last epoch (`keep_best_epoch` off: restoring the first epoch that reached the best
            validation accuracy kept under-trained students when that accuracy saturated early)
BatchNorm folding and Conv+ReLU / Conv+Add+ReLU fusion happen in ONNX Runtime when the session loads (the
export keeps BatchNorm; ORT folds it), so the timed candidates are the fused graphs a user runs.
"""

from __future__ import annotations

import copy
import itertools
import math
import shutil
from typing import Any

import numpy as np
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.models.counts import count_macs, size_counts
from edgeslim.models.spec import add_edit, set_module
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune import channel_multiples as cm
from edgeslim.prune.structured import (
    Importance,
    accumulate_gradients,
    channel_counts,
    make_pruner,
    output_layers,
    removable_blocks,
)
from edgeslim.prune.unsupported import guarded
from edgeslim.train import TrainConfig, evaluate, predict


class StructuredFast(PassConfig):
    target_speedup: float = Field(2.2, gt=1.0, description="ORT batch-1 speed-up vs the unpruned export (x)")
    max_accuracy_drop: float = Field(0.5, ge=0, description="validation points the pick may lose (reported)")
    importance: Importance = "taylor"
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.75], min_length=1,
                                description="channel ratios tried per layer class (every combination)")
    speed_margin: float = Field(0.03, ge=0, description="a candidate must time target x (1 + this)")
    max_blocks: int = Field(1, ge=0, description="at most this many whole blocks removed")
    probe_step: int = Field(4, ge=1, description="channel counts probed: multiples of this")
    step_margin: float = Field(cm.STEP_MARGIN, ge=0, description="relative time within which counts tie")
    tries: int = Field(2, ge=1, description="candidates reaching the target that are fine-tuned in full")
    screen: int = Field(12, ge=1, description="candidates reaching the target screened by a short fine-tune")
    screen_epochs: int = Field(3, ge=0, description="epochs of the screening fine-tune (0: no screening)")
    calibration_batches: int = Field(4, ge=1, description="batches of training data for Taylor gradients")
    temperature: float = Field(4.0, gt=0, description="distillation temperature")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the distillation loss (0: labels only)")
    mixup: float | None = Field(None, gt=0, description="distil on mixup inputs too (Beta parameter)")
    rounds: int = Field(40, ge=5, description="interleaved timing rounds for the candidates")
    tie_samples: int = Field(1, ge=0, description="validation accuracies within this many samples (or one "
                             "standard error) of the best tie; the divergence from the teacher breaks the tie")
    keep_best_epoch: bool = Field(False, description="restore each fine-tune's best-validation-accuracy epoch "
                                  "(off: the last epoch of the cosine schedule)")
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


def _ladder(model: nn.Module, task: Task, cfg: StructuredFast) -> list[list[str]]:
    """Block removals to try: [], [best], [best, next], ... (greedy, least val-accuracy loss first)."""
    out: list[list[str]] = [[]]
    trial = copy.deepcopy(model)
    removed: list[str] = []
    for _ in range(cfg.max_blocks):
        cands = removable_blocks(trial, task.input_shape)
        if not cands:
            break
        scores = {}
        for n in cands:
            t = copy.deepcopy(trial)
            set_module(t, n, nn.Identity())
            scores[n] = evaluate(t, task.x_val, task.y_val)
        best = max(scores, key=lambda k: scores[k])
        set_module(trial, best, nn.Identity())
        removed = removed + [best]
        out.append(removed)
    return out


def build_pruned(model: nn.Module, task: Task, blocks: list[str], ratio: float | dict, fast: dict, cfg: StructuredFast,
          seed: int) -> nn.Module:
    """A pruned copy of `model`: `blocks` replaced by identity, every conv cut to its fast count at `ratio`
    (Torch-Pruning, residual groups together), not fine-tuned."""
    m = copy.deepcopy(model)
    for b in blocks:
        set_module(m, b, nn.Identity())
    geo = cm.conv_geometry(m, task.input_shape)
    names = {id(x): n for n, x in m.named_modules()}
    skip = {names[id(x)] for x in output_layers(m, task.input_shape)}
    ratios = cm.layer_ratios(geo, fast, ratio, skip)
    if not ratios:
        return m
    pruner, _ = make_pruner(m, task.input_shape, ratio=0.0, importance=cfg.importance, layer_ratios=ratios)
    if cfg.importance == "taylor":
        accumulate_gradients(m, task, cfg.calibration_batches, seed=seed)
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m


def probe_fast(model: nn.Module, task: Task, cfg: StructuredFast, ctx: RunContext) -> tuple[dict, dict]:
    """({output size: fast counts}, {output size: {count: ms}}) for the model's conv output sizes."""
    geo = cm.conv_geometry(model, task.input_shape)
    widest: dict[tuple[int, ...], int] = {}
    for c, hw in geo.values():
        widest[hw] = max(widest.get(hw, 0), c)
    fast, times = {}, {}
    for hw, c in widest.items():
        t = cm.time_channel_counts(ctx.measure, hw, cm.candidate_counts(c, cfg.probe_step))
        fast[hw], times[hw] = cm.fast_counts(t, cfg.step_margin), t
    return fast, times


def val_signals(model: nn.Module, task: Task, teacher_out: np.ndarray, temperature: float) -> dict[str, float]:
    """What the pick reads on the validation split: `val_accuracy` (0-1, `evaluate`), `val_loss` (mean
    cross-entropy, nats; MSE for outputs that are not class scores) and `val_divergence` from the teacher's
    outputs `teacher_out` on the same inputs: KL(teacher || student) at `temperature`, x T^2 (nats, the KD
    loss's scale), or the MSE to the teacher's outputs where there are no classes."""
    import torch
    import torch.nn.functional as F

    from edgeslim.train import is_reconstruction, predict

    out, t = torch.from_numpy(predict(model, task.x_val)), torch.from_numpy(teacher_out)
    y = np.asarray(task.y_val)
    if is_reconstruction(model) or np.issubdtype(y.dtype, np.floating):
        target = torch.from_numpy(task.x_val) if is_reconstruction(model) else torch.from_numpy(y)
        loss, div = float(F.mse_loss(out, target)), float(F.mse_loss(out, t))
    else:
        loss = float(F.cross_entropy(out, torch.from_numpy(y).long()))
        div = float(F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(t / temperature, 1),
                             reduction="batchmean")) * temperature**2
    return {"val_accuracy": evaluate(model, task.x_val, task.y_val), "val_loss": round(loss, 5),
            "val_divergence": round(div, 5)}


def rank(rows: list[dict[str, Any]], n_val: int, tie_samples: int) -> list[dict[str, Any]]:
    """`rows` (with `val_accuracy`, `val_divergence`) best first: those tied with the best accuracy by
    divergence from the teacher, then the rest by accuracy. Tied: within the larger of `tie_samples` of the
    `n_val` validation samples and one standard error of the difference of two accuracies near the best
    (sqrt(2 p (1 - p) / n_val)); accuracies outside 0-1 (e.g. minus an MSE) tie only when equal."""
    if not rows:
        return []
    top = max(float(r["val_accuracy"]) for r in rows)
    n = max(n_val, 1)
    tol = (max(tie_samples / n, math.sqrt(2 * top * (1 - top) / n)) if 0 <= top <= 1 else 0.0) + 1e-9

    def key(r: dict[str, Any]) -> tuple[bool, float, float]:
        tied = float(r["val_accuracy"]) >= top - tol
        return (not tied, 0.0 if tied else -float(r["val_accuracy"]), float(r["val_divergence"]))

    return sorted(rows, key=key)


def _kd_carry(task: Task, cfg: StructuredFast) -> dict[str, Any]:
    """The `distill` carry entry (passes.finetune_hooks): logit KD from the run's baseline while fine-tuning."""
    return {"distill": {"temperature": cfg.temperature, "alpha": cfg.alpha, "teachers": [], "cache": True,
                        "mixup": cfg.mixup,
                        "transfer": None, "task": task.name, "input_shape": list(task.input_shape),
                        "n_train": len(task.x_train)}} if cfg.alpha > 0 else {}


@register("structured_fast", StructuredFast)
@guarded("structured_fast")
def structured_fast(model: nn.Module | None, task: Task, cfg: StructuredFast, ctx: RunContext) -> PassResult:
    """Structured pruning to a measured ORT batch-1 speed-up: fast channel counts, KD fine-tuning."""
    assert model is not None
    before = size_counts(model, task.input_shape, "before")
    ch_before = channel_counts(model)
    val_before = evaluate(model, task.x_val, task.y_val)
    work = ctx.stage_dir / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    base = ctx.prev_onnx
    if base is None:
        base = work / "base.onnx"
        export_onnx(model, task.input_shape, base)
    fast, probe_times = probe_fast(model, task, cfg, ctx)
    cands: dict[str, tuple[list[str], dict, nn.Module]] = {}
    geo = cm.conv_geometry(model, task.input_shape)
    classes = cm.layer_classes(geo, {n for n, x in model.named_modules() if x in output_layers(model, task.input_shape)})
    seen: set[tuple] = set()
    for blocks in _ladder(model, task, cfg):
        for combo in itertools.product(sorted(set(cfg.ratios)), repeat=len(classes)):
            r = dict(zip(classes, combo))
            m = build_pruned(model, task, blocks, r, fast, cfg, ctx.seed)
            sig = (tuple(blocks), tuple(sorted(channel_counts(m).items())))
            if sig in seen:
                continue
            seen.add(sig)
            key = f"d{len(blocks)}_" + "_".join(f"r{x:g}" for x in combo)
            cands[key] = (blocks, {f"{c}@{'x'.join(map(str, hw))}": x for (c, hw), x in r.items()}, m)
            export_onnx(m, task.input_shape, work / f"{key}.onnx")
    x = task.x_val[:1].astype(np.float32)
    lat = ctx.measure.time_together({"base": base, **{k: work / f"{k}.onnx" for k in cands}}, {"input": x},
                              rounds=cfg.rounds, per_round=20, warmup=10)
    speed = {k: lat["base"].p50_ms / lat[k].p50_ms for k in cands}
    params = {k: sum(p.numel() for p in m.parameters()) for k, (_, _, m) in cands.items()}
    ladder = [{"candidate": k, "blocks_removed": b, "ratios": r, "params": params[k],
               "macs": count_macs(m, task.input_shape), "speedup": round(speed[k], 3),
               "channels": channel_counts(m)} for k, (b, r, m) in cands.items()]
    goal = cfg.target_speedup * (1 + cfg.speed_margin)
    reach = sorted((k for k in cands if speed[k] >= goal), key=lambda k: (-params[k], -speed[k]))
    met = bool(reach)
    pool = reach[: cfg.tries] if met else [max(cands, key=lambda k: speed[k])]
    ft = (cfg.finetune or ctx.finetune).model_copy(update={"keep_best": cfg.keep_best_epoch})
    teacher_out = predict(ctx.teacher() if ctx.teacher_loader is not None else model, task.x_val)  # what KD follows
    n_val = len(task.y_val)

    def judge(k: str) -> dict[str, Any]:
        return {"candidate": k, "params": params[k], "speedup": round(speed[k], 3),
                **val_signals(cands[k][2], task, teacher_out, cfg.temperature)}

    screened: list[dict[str, Any]] = []
    if met and len(reach) > cfg.tries and cfg.screen_epochs > 0:  # a short KD fine-tune of each, judged on val
        short = ft.model_copy(update={"epochs": cfg.screen_epochs})
        for k in reach[: cfg.screen]:
            ctx.finetune_model(cands[k][2], task, short, desc=f"structured_fast screen {k}", carry=_kd_carry(task, cfg))
            screened.append(judge(k))
        pool = [str(r["candidate"]) for r in rank(screened, n_val, cfg.tie_samples)[: cfg.tries]]
    tried = []
    for k in pool:
        ctx.finetune_model(cands[k][2], task, ft, desc=f"structured_fast {k}", carry=_kd_carry(task, cfg))
        tried.append(judge(k))
    key = str(rank(tried, n_val, cfg.tie_samples)[0]["candidate"])
    acc, pruned = float(next(r for r in tried if r["candidate"] == key)["val_accuracy"]), cands[key][2]
    sp = speed[key]
    blocks = cands[key][0]
    spec = ctx.spec
    for b in blocks:
        spec = add_edit(spec, "identity", module=b)
    shutil.rmtree(work)
    ch_after = channel_counts(pruned)
    drop = 100 * (val_before - acc)
    notes: dict[str, Any] = {
        "target_speedup": cfg.target_speedup, "speed_target_met": met,
        "val_within_drop": drop <= cfg.max_accuracy_drop + 1e-9, "val_samples": len(task.y_val),
        "chosen": key, "speedup_timed": round(sp, 3), "val_accuracy_before": val_before, "val_accuracy": acc,
        "val_drop_points": round(drop, 3), "blocks_removed": blocks, "screened": screened, "tried": tried,
        "ladder": ladder,
        "fast_counts": {"x".join(map(str, hw)): v for hw, v in fast.items()},
        "probe_ms": {"x".join(map(str, hw)): {c: round(t, 4) for c, t in v.items()} for hw, v in probe_times.items()},
        "channels": {n: [ch_before[n], ch_after.get(n)] for n in ch_before},
        "distill": {"temperature": cfg.temperature, "alpha": cfg.alpha, "mixup": cfg.mixup} if cfg.alpha > 0 else None,
        "pick": f"val accuracy; within max({cfg.tie_samples} of {n_val} samples, 1 s.e.) of the best: lowest val_divergence "
                f"from the teacher; fine-tunes keep their {'best-val' if cfg.keep_best_epoch else 'last'} epoch",
    }
    if not classes:
        notes["note"] = "no convolution to prune: structured_fast cuts conv channels and blocks (structured_prune " \
                        "also prunes Linear layers)"
    elif not met:
        notes["note"] = (f"no candidate reached {goal:.2f}x (target {cfg.target_speedup:g}x + margin; fastest "
                         f"{sp:.2f}x): raise max_blocks or add higher ratios")
    elif drop > cfg.max_accuracy_drop:
        notes["note"] = (f"the pick loses {drop:.2f} validation points (> {cfg.max_accuracy_drop:g}; one of the "
                         f"{len(task.y_val)} validation samples is {100 / len(task.y_val):.2f} points)")
    notes.update({**before, **size_counts(pruned, task.input_shape, "after")})
    return PassResult(pruned, spec=spec, notes=notes)
