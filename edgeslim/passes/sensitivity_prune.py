"""`sensitivity_prune`: per-layer sensitivity curves -> per-layer ratios under a global target -> prune
(unstructured: magnitude masks kept in later fine-tuning; structured: Torch-Pruning) -> fine-tune. The
curves and the allocation come from `edgeslim.prune.sensitivity`.

Structured mode can hold a fidelity budget: with `min_val_score`, a pruned and fine-tuned model whose
validation score (for a task without labels `train.teacher_score`: the worst output's cosine to the original's
outputs, the lower of cosine and top-1 agreement for score outputs, over the validation streams with the state
carried for a model with recurrent state, notes `val_score_bound` saying which; accuracy with labels) is
below it is discarded and the per-layer ratios are scaled by `backoff` and tried again from the unpruned model,
up to `max_tries`; the first try that meets the budget is kept, else the best-scoring try or, with
`when_unmet: unpruned`, the unpruned model (said in the notes: `budget_met`, `chosen_try` 0).
Every figure of the choice is on the validation split; the held-out split is never read. `curve_samples`
bounds the validation samples the curves are measured on (their cost is layers x ratios forward passes), and
`matching` fine-tunes by function matching from the original (`distill.matching`) instead of the recipe's
fine-tuning.

An allocated ratio is applied or said: layers whose channel group Torch-Pruning would skip (it reaches a layer
kept whole, `prune.structured.blocked_by`) get no curve and no ratio (notes `not_analysed`, layer -> why), and
an allocated layer whose channels the pruner still left whole is listed in notes `not_pruned` (ratio, why);
each is also one printed line.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.distill.matching import Matching, match
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import size_counts
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.prune.masks import apply_masks, magnitude_masks, weight_sparsity
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct, summary
from edgeslim.prune.sensitivity import DEFAULT_RATIOS, Mode, allocate, sensitivity_curves, write_report
from edgeslim.prune.structured import blocked_by, channel_counts, make_pruner
from edgeslim.prune.unsupported import guarded
from edgeslim.train import TrainConfig, evaluate, teacher_score


class SensitivityPrune(PassConfig):
    target: float = Field(0.5, gt=0, lt=1, description="weight-weighted mean of the per-layer ratios")
    mode: Mode = "unstructured"
    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: list(DEFAULT_RATIOS), min_length=1)
    max_ratio: float = Field(0.95, gt=0, lt=1)
    finetune: TrainConfig | None = None
    curve_samples: int | None = Field(None, ge=2, description="validation samples the curves use (default: all)")
    curve_seconds: float | None = Field(None, ge=0, description="wall seconds the curves may take (default: no "
                                        "limit); layers not measured in time get no ratio (notes `not_measured`)")
    min_val_score: float | None = Field(None, gt=0, le=1, description="structured: the fidelity budget on the "
                                        "validation split after fine-tuning; below it the ratios back off")
    backoff: float = Field(0.6, gt=0, lt=1, description="factor on every per-layer ratio for the next try")
    search: Literal["backoff", "bracket"] = Field("backoff", description="backoff: scale the ratios by `backoff` "
                                                  "until a try meets the budget; bracket: aim the next scale at the "
                                                  "budget from the last score, then narrow between the most pruned "
                                                  "try that met it and the least pruned that did not (`next_scale`)")
    max_tries: int = Field(1, ge=1, le=6, description="structured: tries of the budget (1: no back-off)")
    matching: Matching | None = Field(None, description="fine-tune by function matching from the original")
    reconstruct: Reconstruct | None = Field(None, description="structured: refit the dense layers after each "
                                            "prune to the original's layer outputs (least squares, no labels)")
    min_macs_saved: float = Field(0.0, ge=0, lt=1, description="structured: a try that meets the budget but "
                                  "saves less than this fraction of the MACs is not worth its fidelity loss: the "
                                  "unpruned model is kept instead")
    when_unmet: Literal["best", "unpruned"] = Field("best", description="no try met `min_val_score`: keep the "
                                                    "best-scoring try, or the unpruned model (fidelity first)")


def next_scale(tries: list[tuple[float, float]], budget: float, backoff: float) -> float | None:
    """The `bracket` search's next ratio scale from the tries so far ((scale, validation score) pairs), or None
    when done. No try met `budget` yet: the fidelity loss (1 - score) is taken as proportional to the scale (the
    unpruned model loses nothing) and the next scale aims at 80% of the allowed loss, between 0.1x and `backoff`x
    the least pruned failing scale. Else the geometric middle of the most pruned passing scale and the least
    pruned failing one, until they are within 25% of each other (None: the first scale passed, or tight)."""
    passing = [s for s, v in tries if v >= budget]
    failing = [(s, v) for s, v in tries if v < budget]
    if not failing:
        return None
    hi, score = min(failing)
    if not passing:
        guess = hi * 0.8 * (1 - budget) / max(1 - score, 1e-9)
        return min(max(guess, 0.1 * hi), backoff * hi)
    lo = max(passing)
    return None if hi <= lo * 1.25 else float(np.sqrt(lo * hi))


def _val_subset(task: Task, n: int | None) -> Task:
    """The task with only the first `n` validation samples (the curves' cost grows with them)."""
    if n is None or n >= len(task.x_val):
        return task
    return dataclasses.replace(task, x_val=task.x_val[:n], y_val=task.y_val[:n])


@register("sensitivity_prune", SensitivityPrune)
@guarded("sensitivity_prune")
def sensitivity_prune(model: nn.Module | None, task: Task, cfg: SensitivityPrune, ctx: RunContext) -> PassResult:
    """Per-layer sensitivity curves -> per-layer ratios under a global target -> prune -> fine-tune."""
    assert model is not None
    if any(not 0 < r < 1 for r in cfg.ratios):
        raise EdgeslimError(f"sensitivity_prune: ratios must lie in (0, 1), got {cfg.ratios}")
    curves = sensitivity_curves(model, _val_subset(task, cfg.curve_samples), sorted(cfg.ratios), cfg.mode,
                                max_seconds=cfg.curve_seconds)
    alloc = allocate(curves, cfg.target, cfg.max_ratio)
    write_report(ctx.stage_dir, curves, alloc)
    notes: dict = {"mode": cfg.mode, "allocation": alloc, "report": "sensitivity.md",
                   "curve_samples": min(len(task.x_val), cfg.curve_samples or len(task.x_val)), "curve_split": "val",
                   "curve_time_s": curves["seconds"], "curve_budget_s": cfg.curve_seconds,
                   "curve_budget_stopped": curves["stopped_by_budget"]}
    if curves.get("not_measured"):  # the curves' time budget ran out before these layers' first trial: no ratio
        notes["not_measured"] = curves["not_measured"]
        if not ctx.quiet:
            print(f"[sensitivity_prune] {len(curves['not_measured'])} layer(s) not measured within curve_seconds "
                  f"{cfg.curve_seconds:g} s: no ratio allocated to them", flush=True)
    if curves.get("not_traced"):  # layers the sample never reaches (an If branch it does not take): kept as they are
        notes["not_traced"] = curves["not_traced"]
    if curves.get("skipped"):  # layers whose channel group the pruner would skip: not analysed, no ratio
        notes["not_analysed"] = curves["skipped"]
        if not ctx.quiet:
            for k, w in curves["skipped"].items():
                print(f"[sensitivity_prune] layer {k} cannot be pruned (no ratio allocated): {w}", flush=True)
    if cfg.mode == "unstructured":
        apply_masks(model, magnitude_masks(model, 0.0, "layer", alloc))
        carry = {"keep_sparsity": True}
        hist = ctx.finetune_model(model, task, cfg.finetune, desc="sensitivity_prune", carry=carry)
        notes.update(weight_sparsity=round(weight_sparsity(model), 4), val_accuracy=hist["val_accuracy"])
        return PassResult(model, notes=notes, carry=carry, store_sparse=True)
    before = size_counts(model, task.input_shape, "before")
    keep_copy = cfg.max_tries > 1 or cfg.min_val_score is not None or cfg.reconstruct is not None
    pristine = copy.deepcopy(model) if keep_copy else None
    teacher = ctx.teacher() if cfg.matching is not None else None
    tries: list[dict] = []
    best: tuple[float, nn.Module, dict] | None = None
    scale = 1.0
    for t in range(cfg.max_tries):
        m = model if pristine is None else copy.deepcopy(pristine)  # every try starts from the unpruned model
        ratios = {k: round(min(v * scale, 0.95), 4) for k, v in alloc.items()}
        pruner, _ = make_pruner(m, task.input_shape, ratio=0.0, importance="l2", layer_ratios=ratios)  # unlisted: kept
        counts = channel_counts(m)
        why = {k: blocked_by(pruner.DG, m.get_submodule(k), pruner.ignored_layers) for k, v in ratios.items()
               if int(v * counts.get(k, 0)) >= 1}
        kept = prune_recording(pruner, m) if cfg.reconstruct is not None else pruner.step()
        after = channel_counts(m)
        missed = {k: w or "Torch-Pruning left its channels whole (its group failed the pruner's checks)"
                  for k, w in why.items() if after.get(k) == counts.get(k)}
        if missed:
            notes.setdefault("not_pruned", {}).update({k: {"ratio": ratios[k], "why": w} for k, w in missed.items()})
            for k, w in missed.items():
                print(f"[sensitivity_prune] try {t + 1}: layer {k} allocated {ratios[k]:g} was not pruned: {w}",
                      flush=True)
        recon = None
        if cfg.reconstruct is not None and kept:
            assert pristine is not None
            rc = cfg.reconstruct
            recon = reconstruct(m, pristine, kept, task.x_train, rc, seed=ctx.seed)
            if not ctx.quiet:
                print(f"[sensitivity_prune] try {t + 1}: reconstruction refitted {len(recon['refitted'])} of "
                      f"{recon['layers']} layers in {recon['seconds']:.1f} s (layer error "
                      f"{recon['rel_error_before']} -> {recon['rel_error_after']} on held-out rows)", flush=True)
        if teacher is not None:
            assert cfg.matching is not None
            rec = match(m, teacher, task, cfg.matching, desc=f"sensitivity_prune try {t + 1}", quiet=ctx.quiet)
            score, extra = rec["val_score"], {k: rec[k] for k in ("steps", "seconds", "stopped_by", "feature_layers",
                                                                "crop", "crop_note") if k in rec}
            notes["augmentation"] = rec["augmentation"]
        else:
            hist = ctx.finetune_model(m, task, cfg.finetune, desc="sensitivity_prune")
            score, extra = hist["val_accuracy"], {"epochs": hist["epochs"]}
        if recon is not None:
            extra["reconstruction"] = summary(recon)
        if task.metric == "fidelity":  # no labels: which figure bound the score (top-1 agreement, a stream's state)
            extra["val_score_bound"] = teacher_score(m, task.x_val, task.y_val).describe()
        row = {"try": t + 1, "scale": round(scale, 4), "val_score": score,
               **size_counts(m, task.input_shape, "after"), **extra}
        tries.append(row)
        if not ctx.quiet:
            print(f"[sensitivity_prune] try {t + 1}: ratios x{scale:.3g}, val score {score:.4f}, "
                  f"MACs {row.get('macs_after')}", flush=True)
        if cfg.search == "bracket" and cfg.min_val_score is not None:
            met_now = score >= cfg.min_val_score
            # the most pruned try that meets the budget wins; with none, the best-scoring one
            if best is None or (met_now and (best[0] < cfg.min_val_score or scale > best[2]["scale"])) or (
                    not met_now and best[0] < cfg.min_val_score and score > best[0]):
                best = (score, m, row)
            nxt = next_scale([(r["scale"], r["val_score"]) for r in tries], cfg.min_val_score, cfg.backoff)
            if nxt is None:
                break
            scale = nxt
            continue
        if best is None or score > best[0]:
            best = (score, m, row)
        if cfg.min_val_score is None or score >= cfg.min_val_score:
            best = (score, m, row)
            break
        scale *= cfg.backoff
    assert best is not None
    score, chosen, row = best
    met = cfg.min_val_score is None or score >= cfg.min_val_score
    saved = 1 - row["macs_after"] / before["macs_before"] if row.get("macs_after") and before.get("macs_before") else 1.0
    small = met and saved < cfg.min_macs_saved
    if small and not ctx.quiet:
        print(f"[sensitivity_prune] try {row['try']} met the budget but saves {100 * saved:.1f}% of the MACs "
              f"(< {100 * cfg.min_macs_saved:g}%): the unpruned model is kept", flush=True)
    if small or (not met and cfg.when_unmet == "unpruned"):  # fidelity first: no ratio tried keeps the budget
        chosen = model if pristine is None else pristine
        score = evaluate(chosen, task.x_val, task.y_val)
        row = {"try": 0, "scale": 0.0, "val_score": score, **size_counts(chosen, task.input_shape, "after")}
        if not ctx.quiet and not small:
            print(f"[sensitivity_prune] no try met the budget {cfg.min_val_score}: the unpruned model is kept "
                  f"(val score {score:.4f})", flush=True)
    notes.update(val_accuracy=score, val_split="val", tries=tries, chosen_try=row["try"],
                 ratio_scale=row["scale"], budget=cfg.min_val_score, budget_met=met)
    if task.metric == "fidelity":  # the chosen model's score: the worst output, by cosine or top-1 agreement
        notes.update({k: v for k, v in teacher_score(chosen, task.x_val, task.y_val).notes().items()
                      if k in ("val_score_bound", "val_score_mode", "val_by_output")})
    if small:
        notes["kept_unpruned"] = f"the passing try saved {100 * saved:.1f}% of the MACs (< min_macs_saved)"
    if cfg.matching is not None:
        notes.setdefault("augmentation", cfg.matching.describe())
    notes.update({**before, **{k: v for k, v in row.items() if k.endswith("_after")}})
    return PassResult(chosen, notes=notes)
