"""`edgeslim search MODEL --inputs X.npz`: a search over recipes for a model without labels (an ONNX file, a
`.pt2` program or a zoo folder), the original model being the teacher.

Every trial is a `run --inputs` of a sampled recipe (structured pruning at a ratio, distillation from the
original or not, the INT8 plan or not; a short fine-tune), so the inputs are split as `run` splits them (one
seeded split, the same in every trial): training and calibration on the training part, the trial's score on
the validation part, and the held-out part read only to report the pick. Objectives (Optuna, TPE):
validation fidelity (`val_score`: the worst-output cosine of the last stage, streamed for a model with
recurrent state, or its top-1 agreement where that is lower, for score outputs; higher is better) and the cost,
`latency` (the last stage's p50 over the trial's baseline, timed interleaved in the trial's run: 1 / speed-up)
or `size` (bytes of the last stage's file). The pick: among trials whose validation
score is at least `min_cosine`, the cheapest; when none is, the most faithful. Its held-out fidelity is
reported beside the validation figure it was picked on.

```
OUT/trials/trial0003/      the trial's run folder (a normal run: results.json, stages/)
OUT/best.yaml              the picked recipe (`edgeslim run OUT/best.yaml --model M --inputs X.npz`)
OUT/search.json            every trial (recipe, validation and held-out figures, cost) and the pick
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json, write_text

COSTS = ("latency", "size")


@dataclass(frozen=True)
class InputsSearch:
    """`trials` recipes tried; `proxy_epochs` fine-tuning epochs in each; `min_cosine` the validation fidelity
    a pick needs; `cost` what the pick minimises (`COSTS`)."""

    model: Path
    inputs: Path
    out: Path = Path("runs/search")
    trials: int = 6
    cost: str = "latency"
    min_cosine: float = 0.98
    proxy_epochs: int = 2
    max_ratio: float = 0.6
    seed: int = 0
    device: str | None = None
    threads: int = 1


def recipe_text(ratio: float, distill: bool, int8: bool, epochs: int) -> str:
    """The recipe of one trial (structured pruning, then optionally distillation and the INT8 plan)."""
    lines = ["version: 1", f"finetune: {{epochs: {epochs}, lr: 0.0005, batch_size: 32}}", "passes:",
             f"  - structured_prune: {{ratio: {ratio:g}}}"]
    if distill:
        lines.append(f"  - distill_outputs: {{train: {{epochs: {epochs}, lr: 0.0002, batch_size: 32}}}}")
    if int8:
        lines.append("  - quantize_int8: {}")
    return "\n".join(lines) + "\n"


def _check(job: InputsSearch) -> None:
    if job.cost not in COSTS:
        raise EdgeslimError(f"--objectives: search --inputs minimises one cost, latency or size (got '{job.cost}')")
    if job.trials < 1:
        raise EdgeslimError(f"--trials {job.trials}: must be at least 1")
    if not Path(job.model).exists():
        raise EdgeslimError(f"{job.model}: no such model (an .onnx file, a .pt2 program or a model folder)")
    if not Path(job.inputs).is_file():
        raise EdgeslimError(f"{job.inputs}: no such inputs file (an .npz with one array per model input)")


def _run(job: InputsSearch, text: str, folder: Path, number: int) -> dict:
    from edgeslim.pipeline import run_inputs_recipe, run_onnx_recipe
    from edgeslim.recipe import parse_recipe

    recipe = parse_recipe(text, f"trial {number}")
    if Path(job.model).suffix.lower() == ".onnx":
        return run_onnx_recipe(recipe, Path(job.model), Path(job.inputs), folder, seed=job.seed, quiet=True,
                               force=True, device=job.device, threads=job.threads)
    return run_inputs_recipe(recipe, Path(job.model), Path(job.inputs), folder, seed=job.seed, quiet=True,
                             force=True, device=job.device, threads=job.threads)


def _row(number: int, params: dict, text: str, res: dict) -> dict:
    last, base = res["stages"][-1], res["stages"][0]
    speed = last.get("speedup_vs_baseline")
    return {"number": number, "params": params, "recipe": text, "stage": last["name"],
            "val_cosine": last["fidelity_val"]["cosine"], "test_cosine": last["fidelity"]["cosine"],
            "val_score": val_score(last["fidelity_val"]),
            "val": _short(last["fidelity_val"]), "test": _short(last["fidelity"]),
            "latency_ratio": round(1.0 / speed, 4) if speed else None, "speedup_vs_baseline": speed,
            "size_bytes": last["size_bytes"], "baseline_size_bytes": base["size_bytes"]}


def val_score(f: dict) -> float:
    """The figure a trial is picked on: the worst-output cosine, or the top-1 agreement of score outputs where
    that is lower (a classifier whose outputs stay close can still change its decisions)."""
    top1 = f.get("top1_agreement")
    return float(min(f["cosine"], top1) if top1 is not None else f["cosine"])


def _short(f: dict) -> dict:
    keep = ("split", "mode", "samples", "cosine", "max_abs_err", "top1_agreement", "threshold_agreement",
            "decisions_changed", "map_iou")
    return {k: f[k] for k in keep if k in f}


def pick_trial(rows: list[dict], cost: str, min_cosine: float) -> tuple[dict | None, str]:
    """The picked trial (on validation only) and why (module docstring)."""
    key = "latency_ratio" if cost == "latency" else "size_bytes"
    done = [r for r in rows if r.get("error") is None and r.get(key) is not None]
    if not done:
        return None, "no trial finished"
    def score(r: dict) -> float:
        return float(r.get("val_score", r["val_cosine"]))

    ok = [r for r in done if score(r) >= min_cosine]
    if ok:
        best = min(ok, key=lambda r: (r[key], -score(r)))
        return best, (f"the lowest {cost} of {len(ok)}/{len(done)} trials with validation score >= {min_cosine:g}")
    best = max(done, key=score)
    return best, f"no trial reached validation score {min_cosine:g}; kept the most faithful on validation"


def search_inputs(job: InputsSearch, log: Callable[[str], None] = print) -> dict:
    """Run the search (module docstring); returns the summary written to OUT/search.json."""
    import optuna

    _check(job)
    out = Path(job.out)
    sampler = optuna.samplers.TPESampler(seed=job.seed, n_startup_trials=max(2, job.trials // 3))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({"ratio": 0.3, "distill": True, "int8": True})  # a gentle start
    rows: list[dict] = []
    for n in range(job.trials):
        trial = study.ask()
        params: dict[str, Any] = {"ratio": trial.suggest_float("ratio", 0.1, job.max_ratio, step=0.05),
                                  "distill": trial.suggest_categorical("distill", [True, False]),
                                  "int8": trial.suggest_categorical("int8", [True, False])}
        text = recipe_text(round(params["ratio"], 2), params["distill"], params["int8"], job.proxy_epochs)
        try:
            res = _run(job, text, out / "trials" / f"trial{n:04d}", n)
            row = _row(n, params, text, res)
        except EdgeslimError:
            raise  # the user's model or inputs: one line, as `run` says it
        except Exception as e:  # noqa: BLE001 - one bad candidate must not stop the search: recorded as failed
            rows.append({"number": n, "params": params, "recipe": text, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log(f"trial {n}: failed ({type(e).__name__}: {str(e)[:120]})")
            continue
        rows.append(row)
        cost = row["latency_ratio"] if job.cost == "latency" else row["size_bytes"]
        study.tell(trial, [row["val_score"], cost if cost is not None else float("inf")])
        log(f"trial {n}: ratio {params['ratio']:.2f} distill {params['distill']} int8 {params['int8']}: "
            f"validation score {row['val_score']:.4f}, {job.cost} "
            + (f"{row['speedup_vs_baseline']:.2f}x faster" if job.cost == "latency" and row["speedup_vs_baseline"]
               else f"{row['size_bytes']} B"))
    best, why = pick_trial(rows, job.cost, job.min_cosine)
    summary = {"job": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()},
               "splits": {"train": "training, calibration", "val": "each trial's score and the pick",
                          "test": "held out: reported for every trial, never used to pick"},
               "trials": rows, "best": None if best is None else {"trial": best["number"], "why": why,
                                                                   "file": "best.yaml", "val": best["val"],
                                                                   "test": best["test"],
                                                                   "speedup_vs_baseline": best["speedup_vs_baseline"],
                                                                   "size_bytes": best["size_bytes"]},
               "why": why}
    if best is not None:
        write_text(out / "best.yaml", best["recipe"])
    write_json(out / "search.json", summary)
    return summary
