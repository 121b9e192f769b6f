"""Sensitivity-guided search vs random search at the same trial budget and seeds.

For each seed, two studies run on the same model, task, device and budget: `guided` (TPE whose first
trials are seeded from per-layer sensitivity) and `random` (Optuna's RandomSampler, no seeds). Each
is scored by the hypervolume of its feasible proxy trials (accuracy % vs the second objective),
against the same reference point (accuracy 0, 1.1x the baseline's cost). Higher is better.

    .venv/bin/python benchmarks/bench_search.py --model lenet5 --task digits --trials 10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from edgeslim import api
from edgeslim.search.objectives import OBJECTIVES, objective_value
from edgeslim.search.pareto import hypervolume, reference_point
from edgeslim.search.study import SearchConfig, open_or_join, prepare_study, trial_rows, work
from edgeslim.train import TrainConfig


def run_one(model: Path, args: argparse.Namespace, seed: int, guided: bool, root: Path) -> dict:
    from edgeslim.search.constraints import make_budget
    from edgeslim.search.study import load_device_profile

    budget = make_budget(load_device_profile(args.device), args.max_flash, None, None, None, args.max_accuracy_drop)
    cfg = SearchConfig(model=str(model), task=args.task, device=args.device, objectives=["accuracy", args.cost],
                       trials=args.trials, budget=budget.as_dict(), proxy_epochs=args.proxy_epochs, seed=seed,
                       sampler="tpe" if guided else "random", guided=guided, knobs=args.knobs.split(","))
    out = root / f"{'guided' if guided else 'random'}-{seed}"
    ctx = prepare_study(cfg, out, quiet=True)
    t0 = time.perf_counter()
    study, _ = open_or_join(ctx, f"journal://{out / 'study.journal'}", "bench")
    work(ctx, study)
    rows = trial_rows(study)
    dirs = [OBJECTIVES[o].direction for o in cfg.objectives]
    ref = reference_point(dirs, [objective_value(OBJECTIVES[o], ctx.base_val) for o in cfg.objectives])
    feas = [r["values"] for r in rows if r["feasible"]]
    hv = hypervolume(np.array(feas), dirs, ref) if feas else 0.0
    best = max((v[0] for v in feas), default=float("nan"))
    return {"method": "guided" if guided else "random", "seed": seed, "hypervolume": hv, "feasible": len(feas),
            "rejected": sum(r["state"] == "PRUNED" for r in rows), "best_feasible_accuracy": best,
            "seconds": round(time.perf_counter() - t0, 1), "reference": ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--task", default="digits")
    ap.add_argument("--device", default="cortex-m4")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--cost", default="energy", choices=["energy", "latency", "flash", "arena"])
    ap.add_argument("--max-flash", default="24KB")
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0)
    ap.add_argument("--proxy-epochs", type=int, default=3)
    ap.add_argument("--knobs", default="structured,unstructured,quantize,finetune")
    ap.add_argument("--baseline-epochs", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "model"
        m = api.train(args.model, args.task, model, TrainConfig(epochs=args.baseline_epochs), quiet=True)
        print(f"baseline {args.model} on {args.task}: test accuracy {100 * m['test_accuracy']:.2f}%, "
              f"{m['params']} params; device {args.device}, --max-flash {args.max_flash}, "
              f"--max-accuracy-drop {args.max_accuracy_drop}, {args.trials} trials per study")
        rows = []
        for seed in args.seeds:
            for guided in (True, False):
                rows.append(run_one(model, args, seed, guided, root))
                r = rows[-1]
                print(f"  {r['method']:>6} seed {seed}: hypervolume {r['hypervolume']:.4g}  feasible "
                      f"{r['feasible']}/{args.trials}  rejected before training {r['rejected']}  best feasible "
                      f"accuracy {r['best_feasible_accuracy']:.2f}%  ({r['seconds']:.0f} s)", flush=True)
    print()
    print(f"| method | seed | hypervolume (accuracy % x {args.cost}) | feasible trials | rejected before "
          "training | best feasible accuracy (val) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seed']} | {r['hypervolume']:.4g} | {r['feasible']}/{args.trials} | "
              f"{r['rejected']} | {r['best_feasible_accuracy']:.2f}% |")
    for meth in ("guided", "random"):
        hv = [r["hypervolume"] for r in rows if r["method"] == meth]
        print(f"mean hypervolume {meth}: {np.mean(hv):.4g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
