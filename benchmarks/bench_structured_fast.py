"""Structured pruning for speed: `structured-fast.yaml` against `structured-50.yaml` on ResNet-8 / digits.

The issue-27 target: >= 2.2x faster at batch 1 than the unpruned model (ONNX Runtime, one thread,
interleaved) within 0.5 points of test accuracy, where structured-50 gives about 1.4-1.75x. The baseline
is trained as in benchmarks/bench_prune.py (30 epochs, seed 0); both recipes run as `edgeslim run` runs
them; then the baseline and both pruned ONNX files are timed together, in one interleaved loop, by the
measurement core at each batch size. Test accuracy is top-1 in ONNX Runtime (360 digits: one = 0.28 points).

    .venv/bin/python benchmarks/bench_structured_fast.py --out runs/bench_structured_fast --run-seeds 0,1,2

Everything printed is measured in this run. The machine may be shared: the load average is printed, and
the interleaved ratios are the figures to compare (absolute ms move with load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim.data import load_task
from edgeslim.measure.core import compare_latency
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import train_baseline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"structured-50": ROOT / "recipes" / "structured-50.yaml",
           "structured-fast": ROOT / "edgeslim" / "recipes" / "structured-fast.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_structured_fast"))
    ap.add_argument("--epochs", type=int, default=30, help="baseline training epochs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the baseline")
    ap.add_argument("--run-seeds", default="0", help="seeds of the recipe runs (fine-tuning, Taylor batches)")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds per batch size")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task("digits")
    args.out.mkdir(parents=True, exist_ok=True)
    base = train_baseline("resnet8", task, args.out / f"resnet8_base_s{args.seed}", args.epochs, args.seed)
    runs, walls = {}, {}
    for s in [int(x) for x in args.run_seeds.split(",")]:
        for name, path in ((n, RECIPES[n]) for n in args.recipes.split(",")):
            t0 = time.perf_counter()
            key = f"{name} s{s}"
            shutil.rmtree(args.out / key.replace(" ", "_"), ignore_errors=True)  # fresh, not resumed
            runs[key] = run_recipe(parse_recipe(path.read_text(), name), base, task, args.out / key.replace(" ", "_"),
                                   seed=s, quiet=True, force=True)
            walls[key] = time.perf_counter() - t0
    first = next(iter(runs))
    b0 = runs[first]["stages"][0]
    files = {"baseline": args.out / first.replace(" ", "_") / b0["onnx"],
             **{k: args.out / k.replace(" ", "_") / r["stages"][-1]["onnx"] for k, r in runs.items()}}
    lat = {}
    for b in [int(x) for x in args.batches.split(",")]:
        x = task.x_test[np.arange(b) % len(task.x_test)].astype(np.float32)
        lat[b] = compare_latency(files, {"input": x}, rounds=args.rounds, per_round=40 if b == 1 else 8, warmup=10)
    load = os.getloadavg()
    print(f"\n## ResNet-8 on digits: structured pruning for speed (ORT 1 thread, interleaved; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print("| model | test acc | Δ pts | params | MACs | " + " | ".join(f"b{b} p50 (speed-up)" for b in lat)
          + " | recipe wall |")
    print("|---|---|---|---|---|" + "---|" * len(lat) + "---|")
    rows = []
    for k in files:
        st = b0 if k == "baseline" else runs[k]["stages"][-1]
        sp = {b: lat[b]["baseline"].p50_ms / lat[b][k].p50_ms for b in lat}
        rows.append({"model": k, "accuracy": st["accuracy"], "params": st["params"], "macs": st["macs"],
                     "p50_ms": {b: lat[b][k].p50_ms for b in lat}, "speedup": sp,
                     "notes": {n: st.get("notes", {}).get(n) for n in ("chosen", "blocks_removed", "channels",
                                                                      "speedup_timed", "val_accuracy", "screened",
                                                                      "tried")}})
        cols = " | ".join(f"{lat[b][k].p50_ms:.4f} ms ({sp[b]:.2f}x)" for b in lat)
        d = 100 * (st["accuracy"] - b0["accuracy"])
        print(f"| {k} | {100 * st['accuracy']:.2f}% | {d:+.2f} | {st['params']:,} | {st['macs']:,} | {cols} | "
              + (f"{walls[k]:.0f} s |" if k in walls else "|"))
    print("\ntarget: >= 2.2x at batch 1 within 0.5 points of test accuracy")
    for fast in (r for r in rows if r["model"].startswith("structured-fast")):
        d = 100 * (fast["accuracy"] - b0["accuracy"])
        ok = fast["speedup"].get(1, 0) >= 2.2 and d >= -0.5
        print(f"- {fast['model']}: {'met' if ok else 'NOT MET'} ({fast['speedup'].get(1, float('nan')):.2f}x, "
              f"{d:+.2f} points); kept {fast['notes']['chosen']}, blocks removed {fast['notes']['blocks_removed']}, "
              f"channels {({k: v[1] for k, v in (fast['notes']['channels'] or {}).items()})}")
        for t in fast["notes"]["tried"] or []:  # the finalists as the pick saw them (validation only)
            print(f"  finalist {t['candidate']}: {t.get('params', '?')} params, val {100 * t['val_accuracy']:.2f}%, "
                  f"KL from teacher {t.get('val_divergence', '?')}, timed {t['speedup']}x")
    (args.out / "bench_structured_fast.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"results: {args.out / 'bench_structured_fast.json'}")


if __name__ == "__main__":
    main()
