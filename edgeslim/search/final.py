"""The truth after the proxies: re-run the front's recipes with full fine-tuning, measure them on the
validation and the test split, pick the best feasible recipe per objective **on validation** (feasibility
and objective values from the validation figures), report the test figures, and write search.json and the
report. The test split is read only to report. Also `run_search`, the whole job behind `edgeslim search`
(study, trials, then this)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna

from edgeslim import interrupt
from edgeslim.fsutil import write_json, write_text
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.search.constraints import measured_violations
from edgeslim.search.objectives import OBJECTIVES, mac_layers, measure_candidate, objective_value
from edgeslim.search.pareto import front_indices, hypervolume, reference_point
from edgeslim.search.study import (
    SearchConfig,
    StudyContext,
    open_or_join,
    prepare_study,
    trial_rows,
    wait_for_others,
    work,
)


def proxy_front(ctx: StudyContext, rows: list[dict]) -> list[dict]:
    """Feasible trials on the proxy Pareto front, best accuracy first."""
    feas = [r for r in rows if r["feasible"]]
    if not feas:
        return []
    dirs = [OBJECTIVES[o].direction for o in ctx.cfg.objectives]
    idx = front_indices(np.array([r["values"] for r in feas]), dirs)
    return sorted((feas[i] for i in idx), key=lambda r: -r["values"][0])


def layer_details(run_dir: Path, base_model: Path, onnx_path: Path, stages: list[dict]) -> list[dict]:
    """Per Conv/Linear layer of a final model: channels kept (structured), zero fraction (unstructured)
    and the weights' bit width: in the deployed ONNX, or as stored by a mixed-precision stage."""
    from edgeslim import models
    from edgeslim.search.baseline import LAYER_TYPES

    folders = sorted(p for p in (run_dir / "stages").iterdir() if (p / models.io.WEIGHTS).exists())
    net, _ = models.load_model(folders[-1])
    ref, _ = models.load_model(base_model)
    ref_mods = dict(ref.named_modules())
    rows = []
    for name, m in net.named_modules():
        if not isinstance(m, LAYER_TYPES):
            continue
        w = m.weight.detach()
        r = ref_mods.get(name)
        rows.append({"layer": name, "out_channels": int(w.shape[0]),
                     "baseline_out_channels": int(r.weight.shape[0]) if r is not None else None,
                     "sparsity": float((w == 0).float().mean()), "params": int(w.numel())})
    bits = [8 if x.precision == "int8" else 32 for x in mac_layers(onnx_path)]
    for row, b in zip(rows, bits):
        row["weight_bits"] = b
    mixed = next((s["notes"].get("bits") for s in stages if s["name"] == "mixed_precision"), None)
    for row in rows:
        if mixed and row["layer"] in mixed:
            row["weight_bits"] = mixed[row["layer"]]
    return rows


def final_entry(r: dict, objectives: list[str], val: dict, test: dict, val_viol: dict[str, float],
                test_viol: dict[str, float]) -> dict:
    """One row of search.json's `front`: `metrics` are the test figures (reported), `val_metrics` the
    validation figures; `feasible` and `values` (what `pick_best` reads) come from validation,
    `test_values` / `test_violations` / `feasible_on_test` are reported only."""
    return {"trial": r["number"], "slot": r["slot"], "recipe": r["recipe"], "metrics": test, "val_metrics": val,
            "proxy_metrics": r["metrics"], "violations": val_viol, "feasible": all(v <= 0 for v in val_viol.values()),
            "picked_on": "val", "values": [objective_value(OBJECTIVES[o], val) for o in objectives],
            "test_values": [objective_value(OBJECTIVES[o], test) for o in objectives],
            "test_violations": test_viol, "feasible_on_test": all(v <= 0 for v in test_viol.values())}


def pick_best(finals: list[dict], objectives: list[str]) -> dict[str, dict]:
    """The best feasible entry per objective, from the **validation** figures only (`feasible`, `values`;
    ties: higher validation accuracy, the first objective's value). Test figures are never read here."""
    feas = [f for f in finals if f["feasible"]]
    best: dict[str, dict] = {}
    for i, o in enumerate(objectives):
        if not feas:
            break
        sign = -1 if OBJECTIVES[o].direction == "maximize" else 1
        best[o] = min(feas, key=lambda f: (sign * f["values"][i], -f["values"][0]))
    return best


def finalize(ctx: StudyContext, study: optuna.Study, top: int) -> dict:
    """Run the front fully, choose, write search.json + best_<objective>.yaml + the reports."""
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    rows = trial_rows(study)
    front = proxy_front(ctx, rows)[:top]
    finals = []
    for r in front:
        run_dir = ctx.out / "final" / f"slot{int(r['slot']):04d}"
        with interrupt.during(f"the final fine-tuning of slot {r['slot']}", "trials and finished final runs are kept"):
            print(f"final slot {r['slot']}: full fine-tuning and test-split measurement", flush=True)
            res = run_recipe(parse_recipe(r["recipe"], f"slot {r['slot']}"), Path(ctx.cfg.model), ctx.task, run_dir,
                             seed=ctx.cfg.seed, quiet=True, force=True, task_spec=ctx.cfg.task,
                             device=ctx.cfg.device)
        onnx_path = run_dir / res["stages"][-1]["onnx"]
        m = measure_candidate(onnx_path, ctx.task, ctx.device, "test", res["stages"][-1]["size_bytes"])
        # measured by the pipeline: ONNX Runtime p50 on this host, 1 thread, batch 1 (baseline: stage 0)
        m["ort_latency_ms_p50"] = res["stages"][-1].get("latency_ms_p50")
        ctx.base_test.setdefault("ort_latency_ms_p50", res["stages"][0].get("latency_ms_p50"))
        mv = {**m, "accuracy": round(onnx_accuracy(onnx_path, ctx.task.x_val, ctx.task.y_val), 6),
              "accuracy_split": "val"}  # the other figures do not depend on the split
        finals.append(final_entry(r, ctx.cfg.objectives, mv, m, measured_violations(mv, ctx.base_val["accuracy"],
                                                                                      ctx.budget),
                                  measured_violations(m, ctx.base_test["accuracy"], ctx.budget)))
        finals[-1].update(run_dir=str(run_dir.relative_to(ctx.out)),
                          layers=layer_details(run_dir, Path(ctx.cfg.model), onnx_path, res["stages"]))
        print(f"final slot {r['slot']}: val accuracy {100 * mv['accuracy']:.2f}% (picks), test accuracy "
              f"{100 * m['accuracy']:.2f}% (reported)  flash {m['flash_bytes']} B  arena {m['arena_bytes']} B  "
              f"energy {m['energy_mj']:.4g} mJ ({m['energy_method']})  "
              f"({'fits' if finals[-1]['feasible'] else 'breaks the budget'} on validation)", flush=True)
    best = {}
    for o, pick in pick_best(finals, ctx.cfg.objectives).items():
        path = ctx.out / f"best_{o}.yaml"
        write_text(path, f"# best feasible {o} on the validation split found by edgeslim search (trial "
                         f"{pick['trial']}); reproduce with\n"
                         f"# edgeslim run {path.name} --model {ctx.cfg.model} --task {ctx.cfg.task} --out RUN\n"
                         + pick["recipe"])
        i = ctx.cfg.objectives.index(o)
        best[o] = {"trial": pick["trial"], "file": path.name, "picked_on": "val", "val": pick["values"][i],
                   "test": pick["test_values"][i]}
    dirs = [OBJECTIVES[o].direction for o in ctx.cfg.objectives]
    base_vals = [objective_value(OBJECTIVES[o], ctx.base_val) for o in ctx.cfg.objectives]
    ref = reference_point(dirs, base_vals)
    feas_rows = [r for r in rows if r["feasible"]]
    hv = hypervolume(np.array([r["values"] for r in feas_rows]), dirs, ref) if feas_rows else 0.0
    summary = {
        "config": ctx.cfg.identity(), "device": ctx.device.name, "budget": ctx.budget.as_dict(),
        "baseline": {"val": {k: v for k, v in ctx.base_val.items() if k != "energy_layers"},
                     "test": ctx.base_test},
        "counts": {**{s: sum(r["state"] == s and not r["requeued"] for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")},
                   "REQUEUED": sum(r["requeued"] for r in rows)},  # interrupted trials whose slot ran again
        "feasible_trials": len(feas_rows), "hypervolume": hv, "reference_point": ref,
        "trials": rows, "front": finals, "best": best,
    }
    write_json(ctx.out / "search.json", summary)
    from edgeslim.report.search_html import write_search_report

    write_search_report(ctx.out, summary)
    return summary


def run_search(cfg: SearchConfig, out: Path, *, storage: str | None = None, study_name: str = "edgeslim-search",
               worker: bool = False, wait: float = 3600.0, top: int = 6,
               log: Callable[[str, bool], None] = lambda msg, warn: print(msg, flush=True)) -> dict:
    """Open (or join) the study, run trial slots until none is left, then, unless a `worker`, wait up to
    `wait` s for the other workers and `finalize`. `log(message, is_warning)` gets the progress lines.
    Returns the summary (a worker: {"ran": trials it ran})."""
    ctx = prepare_study(cfg, out)
    url = storage or f"journal://{out / 'study.journal'}"
    study, created = open_or_join(ctx, url, study_name)
    log(f"{'created' if created else 'joined'} study '{study_name}' in {url}: {cfg.trials} trials, "
        f"knobs {', '.join(k.name for k in ctx.knobs)}", False)
    ran = work(ctx, study)
    if worker:
        return {"ran": ran}
    if not wait_for_others(ctx, study, wait):
        log(f"other workers still running after {wait:.0f} s; finishing with what is done", True)
    return finalize(ctx, study, top)
