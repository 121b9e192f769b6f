"""The hardware-aware search: an Optuna study over recipes for one model, task and device.

```
OUT/study.journal           the default storage (resumable; --storage points elsewhere)
OUT/baseline.onnx
OUT/trials/slot0003/        the proxy run of slot 3 (a normal edgeslim run folder)
OUT/final/slot0003/         the full fine-tune of a front member, measured on the test split
OUT/best_<objective>.yaml   the recipe that reproduces the best feasible model per objective
OUT/search.json, OUT/report.md, OUT/report.html
```
Trials are ranked by a short fine-tune (the proxy, accuracy on the validation split); the front's
members are then fine-tuned fully, exported and measured on the test split.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgeslim import interrupt
from edgeslim.data import Task, load_task
from edgeslim.devices import load_device
from edgeslim.errors import EdgeslimError, choices
from edgeslim.search import workers
from edgeslim.search.baseline import channel_sensitivity, profile_baseline
from edgeslim.search.constraints import Budget, check_reachable, measured_violations, predicted_violations
from edgeslim.search.objectives import OBJECTIVES, measure_candidate, objective_value
from edgeslim.search.space import (
    MAX_RATIO,
    Baseline,
    Knob,
    RecipeCandidate,
    active_knobs,
    extreme_footprint,
    knob_names,
    prunable_layers,
    ratio_param,
    recipe_yaml,
    sample_candidate,
)

VIOLATION_KEYS = ("flash", "ram", "latency", "energy", "accuracy_drop")


@dataclass
class SearchConfig:
    model: str  # trained model folder (absolute path: workers on other machines need the same path)
    task: str
    device: str
    objectives: list[str]
    trials: int
    budget: dict
    proxy_epochs: int = 3
    proxy_slack: float = 2.0  # accuracy points the proxy may lose beyond the budget (full fine-tune recovers)
    seed: int = 0
    sampler: str = "tpe"  # tpe or random
    guided: bool = True  # sensitivity-seeded starting points
    knobs: list[str] = field(default_factory=knob_names)
    lr: float = 1e-3

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items()}


@dataclass
class StudyContext:
    cfg: SearchConfig
    out: Path
    task: Task
    device: Any
    base: Baseline
    base_val: dict
    base_test: dict
    budget: Budget
    knobs: list[Knob]
    quiet: bool = False


def load_device_profile(name: str) -> Any:  # -> edgeslim.devices.Device
    return load_device(name)


def prepare_study(cfg: SearchConfig, out: Path, quiet: bool = False) -> StudyContext:
    """Everything a worker needs before it claims a trial; validates the request up front."""
    for o in cfg.objectives:
        if o not in OBJECTIVES:
            raise EdgeslimError(f"--objectives: unknown objective '{o}'; valid: {choices(OBJECTIVES)}")
    if "accuracy" not in cfg.objectives:
        raise EdgeslimError("--objectives must include accuracy (the search trades it against cost)")
    for k in cfg.knobs:
        if k not in knob_names():
            raise EdgeslimError(f"--knobs: unknown knob '{k}'; valid: {choices(knob_names())}")
    if cfg.trials < 1:
        raise EdgeslimError(f"--trials {cfg.trials}: must be at least 1")
    if not (Path(cfg.model) / "spec.json").exists():
        raise EdgeslimError(f"{cfg.model}: not an edgeslim model folder (no spec.json); train one with "
                            "`edgeslim train`")
    device = load_device_profile(cfg.device)
    task = load_task(cfg.task, seed=cfg.seed)
    base, bval, btest = profile_baseline(Path(cfg.model), task, device, out)
    budget = Budget(**cfg.budget)
    knobs = active_knobs(cfg.knobs)
    best = extreme_footprint(knobs, base)
    best_lat = 1e3 * best.macs / device.macs_per_second("int8" if best.act_bits <= 8 else "fp32")
    how = "knobs " + ", ".join(k.name for k in knobs) + f" at their limits, device {device.name}"
    check_reachable(best, best_lat, budget, how)
    return StudyContext(cfg, out, task, device, base, bval, btest, budget, knobs, quiet)


def guided_seeds(ctx: StudyContext, n: int) -> list[dict]:
    """Starting points from per-layer sensitivity: for growing accuracy tolerances, each layer gets the
    largest tested channel ratio whose drop (no fine-tuning) stays within the tolerance, so robust layers
    are pruned hard and sensitive ones spared; INT8 weights; ratios raised until the predicted
    footprint fits the budget."""
    if n <= 0 or not any(k.name == "structured" for k in ctx.knobs):
        return []
    sens = channel_sensitivity(Path(ctx.cfg.model), ctx.task)
    seeds = []
    # (tolerated drop in points before fine-tuning, largest ratio any layer gets), gentle to aggressive
    for tol, cap in ((0.5, 0.25), (2.0, 0.4), (5.0, 0.55), (10.0, 0.7))[:n]:
        ratios = {name: min(cap, max([r for r, d in curve.items() if d <= tol], default=0.0))
                  for name, curve in sens.items()}
        for boost in [x * 0.05 for x in range(int(MAX_RATIO / 0.05) + 1)]:
            p: dict[str, Any] = {ratio_param(k): round(min(MAX_RATIO, v + boost), 2) for k, v in ratios.items()}
            p.update({"weights": "int8", "sparsity": 0.0, "distill": False, "lowrank_keep": 1.0,
                      "finetune_epochs": 12})
            cand = sample_candidate(optuna.trial.FixedTrial(_only_known(p, ctx)), ctx.knobs, ctx.base)
            if not predicted_violations(cand.footprint, predicted_latency(ctx, cand), ctx.budget):
                break
        seeds.append(_only_known(p, ctx))
    return seeds


def _only_known(p: dict, ctx: StudyContext) -> dict:
    names = {ratio_param(n) for n in prunable_layers(ctx.base)} | {
        "weights", "sparsity", "distill", "lowrank_keep", "finetune_epochs"}
    active = {k.name for k in ctx.knobs}
    drop = set()
    for knob, keys in (("quantize", {"weights"}), ("unstructured", {"sparsity"}), ("distill", {"distill"}),
                       ("lowrank", {"lowrank_keep"}), ("finetune", {"finetune_epochs"})):
        if knob not in active:
            drop |= keys
    if "structured" not in active:
        drop |= {ratio_param(n) for n in prunable_layers(ctx.base)}
    return {k: v for k, v in p.items() if k in names and k not in drop}


def predicted_latency(ctx: StudyContext, cand: RecipeCandidate) -> float:
    prec = "int8" if cand.footprint.act_bits <= 8 else "fp32"  # what the kernels compute in
    return 1e3 * cand.footprint.macs / ctx.device.macs_per_second(prec)


def make_sampler(cfg: SearchConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, aware of the constraint values each trial sets) or random search."""
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed + offset)
    if cfg.sampler != "tpe":
        raise EdgeslimError(f"--sampler {cfg.sampler}: valid: random, tpe")
    return optuna.samplers.TPESampler(seed=cfg.seed + offset, multivariate=True,
                                      n_startup_trials=max(4, cfg.trials // 4))


def run_trial(ctx: StudyContext, study: optuna.Study, trial: optuna.Trial) -> None:
    """Sample, reject cheaply if infeasible, else proxy-train, measure, and tell the study."""
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    cand = sample_candidate(trial, ctx.knobs, ctx.base)
    lat = predicted_latency(ctx, cand)
    fp = cand.footprint
    trial.set_user_attr("predicted", {"flash_bytes": round(fp.flash_bytes), "arena_bytes": round(fp.arena_bytes),
                                      "macs": round(fp.macs), "latency_ms": lat, "weight_bits": fp.weight_bits})
    trial.set_user_attr("recipe", recipe_yaml(cand.steps, cand.finetune_epochs, ctx.cfg.lr))
    trial.set_user_attr("keep_out", cand.keep_out)
    bad = predicted_violations(fp, lat, ctx.budget)
    if bad:
        trial.set_user_attr("rejected", "; ".join(bad) + " (predicted, before training)")
        study.tell(trial, state=TrialState.PRUNED)
        _log(ctx, f"trial {trial.number}: rejected before training ({'; '.join(bad)})")
        return
    slot = int(trial.user_attrs.get("slot", trial.number))
    _log(ctx, f"trial {trial.number}: proxy run (slot {slot}, {ctx.cfg.proxy_epochs} fine-tuning epochs at most)")
    proxy = recipe_yaml(cand.steps, min(ctx.cfg.proxy_epochs, cand.finetune_epochs), ctx.cfg.lr)
    t0 = time.perf_counter()
    try:
        res = run_recipe(parse_recipe(proxy, f"trial {trial.number}"), Path(ctx.cfg.model), ctx.task,
                         ctx.out / "trials" / f"slot{slot:04d}", seed=ctx.cfg.seed, quiet=True, force=True,
                         task_spec=ctx.cfg.task, report=False, device=ctx.cfg.device)  # decisions for it
        m = measure_candidate(ctx.out / "trials" / f"slot{slot:04d}" / res["stages"][-1]["onnx"],
                              ctx.task, ctx.device, "val", res["stages"][-1]["size_bytes"])
    except Exception as e:  # one bad candidate must not stop the study: record it as failed
        trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
        study.tell(trial, state=TrialState.FAIL)
        _log(ctx, f"trial {trial.number}: failed ({type(e).__name__}: {str(e)[:120]})")
        return
    m.pop("energy_layers", None)
    m["seconds"] = round(time.perf_counter() - t0, 2)
    viol = measured_violations(m, ctx.base_val["accuracy"], ctx.budget, ctx.cfg.proxy_slack)
    trial.set_user_attr("metrics", m)
    trial.set_user_attr("violations", viol)
    for k in VIOLATION_KEYS:  # every trial sets every key: TPE compares constraint vectors
        trial.set_constraint(k, viol.get(k, -1.0))
    values = [objective_value(OBJECTIVES[o], m) for o in ctx.cfg.objectives]
    study.tell(trial, values)
    ok = "feasible" if all(v <= 0 for v in viol.values()) else "infeasible " + ",".join(
        k for k, v in viol.items() if v > 0)
    _log(ctx, f"trial {trial.number}: " + "  ".join(f"{o} {v:.4g}" for o, v in zip(ctx.cfg.objectives, values))
         + f"  ({ok}, {m['seconds']:.0f} s)")


def work(ctx: StudyContext, study: optuna.Study, max_trials: int | None = None) -> int:
    """Claim and run slots until none is left (or `max_trials` ran). Returns how many this process ran."""
    done = 0
    while max_trials is None or done < max_trials:
        workers.recover_stale(study)
        trial = None
        try:
            trial = workers.claim_trial(study)
            if trial is None:
                break
            with interrupt.during(f"search trial {trial.number}", "finished trials are kept and this one's slot "
                                  "is queued again"):
                run_trial(ctx, study, trial)
        except interrupt.Interrupted:  # give the slot back now (a SIGKILL leaves that to recover_stale)
            ft = study._storage.get_trial(trial._trial_id) if trial is not None else None
            if ft is not None and ft.state == TrialState.RUNNING:
                workers.requeue(study, ft, "interrupted; slot re-queued")
            raise
        done += 1
    return done


def wait_for_others(ctx: StudyContext, study: optuna.Study, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while True:
        workers.recover_stale(study)
        waiting, running = workers.pending(study)
        if waiting:
            work(ctx, study)
            continue
        if not running:
            return True
        if time.time() > deadline:
            return False
        time.sleep(1.0)


def open_or_join(ctx: StudyContext, storage_url: str, study_name: str) -> tuple[optuna.Study, bool]:
    cfg = ctx.cfg
    storage = workers.make_storage(storage_url)
    directions = [OBJECTIVES[o].direction for o in cfg.objectives]
    n_seeds = min(4, cfg.trials // 3) if cfg.guided else 0
    seeds = guided_seeds(ctx, n_seeds)
    study, created = workers.open_study(storage, study_name, directions, cfg.identity(), seeds, cfg.trials)
    study.sampler = make_sampler(cfg, 0 if created else 1 + os.getpid() % 9973)
    return study, created


def _log(ctx: StudyContext, msg: str) -> None:
    if not ctx.quiet:
        print(msg, flush=True)


def trial_rows(study: optuna.Study) -> list[dict]:
    """Every finished trial as a plain dict (for search.json, the report and the benchmark)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            continue
        viol = t.user_attrs.get("violations") or {}
        rows.append({
            "number": t.number, "slot": t.user_attrs.get("slot"), "seeded": t.user_attrs.get("seeded", False),
            "state": t.state.name, "values": t.values, "params": t.params,
            "metrics": t.user_attrs.get("metrics"), "predicted": t.user_attrs.get("predicted"),
            "rejected": t.user_attrs.get("rejected"), "error": t.user_attrs.get("error"),
            "violations": viol, "feasible": t.state == TrialState.COMPLETE and all(v <= 0 for v in viol.values()),
            "recipe": t.user_attrs.get("recipe"), "keep_out": t.user_attrs.get("keep_out", {}),
            "requeued": bool(t.user_attrs.get("requeued")),  # interrupted or its worker died: slot re-run
        })
    return rows
