"""recipes/prune-int8.yaml (structured 50% + INT8) on ResNet-8 / built-in `digits`; prints one table.

    .venv/bin/python benchmarks/bench_prune_int8.py --out runs/bench_prune_int8

Trains the baseline (cached in --out), runs the recipe (its first stage is exactly structured-50's
pruning, so the same run gives "pruning alone" and "pruning + INT8"), then times the baseline, the pruned
FP32 model and the final model together in this process (interleaved rounds, per-round ratios with
95% confidence intervals: `measure.decide`). Accuracy is top-1 on the 360 test digits in ONNX Runtime;
size is the ONNX file in bytes. Targets (issue 17): final >= 10x smaller than the baseline within 1
point, and at least as fast as pruning alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.deploy.export import export_onnx
from edgeslim.measure.decide import ratio
from edgeslim.measure.latency import interleaved_times
from edgeslim.onnxkit.session import onnx_accuracy, session
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, train_model

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_prune_int8"))
    ap.add_argument("--epochs", type=int, default=30, help="baseline training epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0, help="interleaved timing, s")
    args = ap.parse_args()
    task = load_task("digits", seed=args.seed)
    base = args.out / "resnet8_base"
    if not (base / "spec.json").exists():
        torch.manual_seed(args.seed)
        spec = models.make_spec("resnet8", task.input_shape, task.num_classes)
        m = models.build_model(spec)
        train_model(m, task, TrainConfig(epochs=args.epochs, seed=args.seed), quiet=True)
        models.save_model(base, m, spec)
    res = run_recipe(load_recipe(ROOT / "recipes" / "prune-int8.yaml"), base, task, args.out / "run",
                     seed=args.seed, quiet=True, force=True)
    stages = res["stages"]
    run = args.out / "run"
    paths = {s["name"]: run / s["onnx"] for s in stages}
    if not paths["baseline"].exists():
        export_onnx(models.load_model(base)[0], task.input_shape, paths["baseline"])
    sess = {k: session(p) for k, p in paths.items()}
    x = task.x_test[:1].astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sess.items()}
    times = interleaved_times(sess, feeds, seconds=args.seconds, per_round=5, min_rounds=50)
    q = stages[-1]
    notes = q.get("notes", {})
    print("| stage | test acc | ONNX bytes | x smaller vs baseline | p50 ms | speed-up vs baseline (95% CI) |")
    print("|---|---|---|---|---|---|")
    b_acc = onnx_accuracy(paths["baseline"], task.x_test, task.y_test)
    for s in stages:
        p = paths[s["name"]]
        acc = onnx_accuracy(p, task.x_test, task.y_test)
        r = ratio(times[s["name"]], times["baseline"], per=5)
        print(f"| {s['name']} | {100 * acc:.2f}% ({100 * (acc - b_acc):+.2f}) | {p.stat().st_size:,} | "
              f"{paths['baseline'].stat().st_size / p.stat().st_size:.2f}x | "
              f"{1e3 * float(np.median(times[s['name']])):.4f} | {r.show()} |")
    r = ratio(times[q["name"]], times[stages[1]["name"]], per=5)
    print(f"\nfinal vs pruning alone: {r.show()} -> {r.speed_verdict(0.03)} (tied = within 3% or the CI reaches 1)")
    print(f"quantize_int8 chose: {notes.get('format')} -- {notes.get('why')}")
    if notes.get("slower_than_fp32"):
        print(f"quantize_int8 says: {notes['slower_than_fp32']}")
    for row in notes.get("tried", []):
        print(f"  {row['candidate']}: acc {100 * row['val_accuracy']:.2f}% (val), {row['size_bytes']:,} B, "
              f"{row['speedup_vs_fp32']:.2f}x vs pruned FP32 (CI {row['speedup_ci'][0]:.2f}-{row['speedup_ci'][1]:.2f}) "
              f"-- {row['why']}")
    fl = notes.get("float_layers", {})
    print(f"float layers ({len(fl)}): " + "; ".join(f"{k}: {v}" for k, v in fl.items()))
    (args.out / "summary.json").write_text(json.dumps({"stages": stages}, indent=1, default=str))


if __name__ == "__main__":
    main()
