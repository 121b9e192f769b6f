"""Pruning benchmark on the built-in `digits` task (1x8x8 images, 360 test digits).

1. ResNet-8, structured pruning of 50% of channels (recipes/structured-50.yaml, and other importance
   criteria as a comparison, random = control): test accuracy in ONNX Runtime, params, MACs and ORT
   latency at batch 1 / 64 / 256, baseline and pruned timed interleaved in this process.
2. LeNet-300-100, unstructured global pruning to 92% (recipes/unstructured-92.yaml; scope global and
   lamp): accuracy vs the dense baseline, dense ONNX size vs the compressed sparse file, latency.
3. Sensitivity report (per-layer accuracy vs ratio, table + plot) for both models.
4. Early-exit table for ResNet-8 (accuracy, MACs and latency per input, per threshold).

    .venv/bin/python benchmarks/bench_prune.py --out runs/bench_prune

Everything printed is measured in this run. Latency is wall-clock on a shared machine: the ratio of the
interleaved medians is the robust figure; absolute ms move with load.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.measure.core import compare_latency
from edgeslim.passes.early_exit import EarlyExit, early_exit_table
from edgeslim.pipeline import run_recipe
from edgeslim.prune.sensitivity import sensitivity_curves, write_report
from edgeslim.recipe import parse_recipe
from edgeslim.train import TrainConfig, train_model

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def baseline(arch: str, task, out: Path, epochs: int, seed: int) -> Path:
    return train_baseline(arch, task, out / f"{arch}_base_s{seed}", epochs, seed)


def train_baseline(arch: str, task, folder: Path, epochs: int, seed: int) -> Path:
    """A zoo model trained on `task` into `folder` (fixed seed), or the one already there. The benchmarks'
    one baseline trainer (bench_int8_regression and bench_structured_fast import it)."""
    if not (folder / "spec.json").exists():
        spec = models.make_spec(arch, task.input_shape, task.num_classes)
        torch.manual_seed(seed)
        m = models.build_model(spec)
        train_model(m, task, TrainConfig(epochs=epochs, seed=seed), quiet=True)
        models.save_model(folder, m, spec)
    return folder


def recipe_text(name: str, ft_epochs: int | None) -> str:
    text = (RECIPES / f"{name}.yaml").read_text()
    return text if ft_epochs is None else re.sub(r"epochs: \d+", f"epochs: {ft_epochs}", text)


def run(text: str, name: str, model_dir: Path, task, out: Path, seed: int) -> dict:
    return run_recipe(parse_recipe(text, name), model_dir, task, out / name, seed=seed, quiet=True,
                      force=True)


def latency_rows(run_dir: Path, res: dict, task, batches: list[int]) -> dict:
    paths = [run_dir / res["stages"][0]["onnx"], run_dir / res["stages"][-1]["onnx"]]
    out = {}
    for b in batches:
        x = task.x_test[np.arange(b) % len(task.x_test)].astype(np.float32)
        lat = compare_latency({"base": paths[0], "pruned": paths[1]}, {"input": x}, rounds=9,
                              per_round=40 if b == 1 else 8, warmup=5)
        t0, t1 = lat["base"].p50_ms, lat["pruned"].p50_ms
        out[b] = {"base_ms": t0, "pruned_ms": t1, "speedup": t0 / t1}
    return out


def structured(task, out: Path, args) -> list[dict]:
    base = baseline("resnet8", task, out, args.epochs, args.seed)
    text = recipe_text("structured-50", args.ft_epochs)
    rows = []
    for imp in args.criteria:
        name = f"resnet8_structured50_{imp}"
        res = run(text.replace("importance: taylor", f"importance: {imp}"), name, base, task, out, args.seed)
        b, p = res["stages"][0], res["stages"][-1]
        lat = latency_rows(out / name, res, task, args.batches)
        rows.append({"criterion": imp, "acc_base": b["accuracy"], "acc_pruned": p["accuracy"],
                     "params": [b["params"], p["params"]], "macs": [b["macs"], p["macs"]],
                     "channels_removed": p["notes"]["channels_removed_fraction"], "latency": lat})
    return rows


def unstructured(task, out: Path, args) -> list[dict]:
    text = recipe_text("unstructured-92", args.ft_epochs)
    rows = []
    for seed, scope in [(s, sc) for s in args.seeds for sc in args.scopes]:
        base = baseline("lenet300", task, out, args.epochs, seed)
        name = f"lenet300_unstructured92_{scope}_s{seed}"
        res = run(text.replace("scope: global", f"scope: {scope}"), name, base, task, out, seed)
        b, p = res["stages"][0], res["stages"][-1]
        lat = latency_rows(out / name, res, task, [1, 256])
        rows.append({"scope": scope, "seed": seed, "acc_base": b["accuracy"], "acc_pruned": p["accuracy"],
                     "sparsity": p["notes"]["weight_sparsity"], "nonzero": [b["nonzero_params"], p["nonzero_params"]],
                     "size_dense": [b["size_bytes"], p["size_bytes"]],
                     "size_compressed": [b["size_bytes_compressed"], p["size_bytes_compressed"]],
                     "latency": lat})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_prune"))
    ap.add_argument("--epochs", type=int, default=30, help="baseline training epochs")
    ap.add_argument("--ft-epochs", type=int, default=None, help="override the recipes' fine-tuning epochs")
    ap.add_argument("--criteria", default="taylor,l2,bn_scale,random")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--seed", type=int, default=0, help="seed of the ResNet-8 baseline")
    ap.add_argument("--seeds", default="0,1,2,3", help="LeNet-300-100 baselines (one per seed)")
    ap.add_argument("--scopes", default="global", help="unstructured scopes: global, lamp, layer")
    ap.add_argument("--skip", default="", help="comma list of: structured,unstructured,sensitivity,early_exit")
    args = ap.parse_args()
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.scopes = [x for x in args.scopes.split(",") if x]
    skip = set(args.skip.split(","))
    torch.set_num_threads(1)
    task = load_task("digits")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"task": task.summary()}

    if "structured" not in skip:
        report["structured"] = rows = structured(task, args.out, args)
        print("\n## ResNet-8 on digits, 50% of channels removed, fine-tuned (ORT, 1 thread)")
        print("| criterion | test acc base -> pruned | params | MACs | " +
              " | ".join(f"latency b{b} base -> pruned (speedup)" for b in args.batches) + " |")
        print("|---|---|---|---|" + "---|" * len(args.batches))
        for r in rows:
            lat = " | ".join(f"{r['latency'][b]['base_ms']:.3f} -> {r['latency'][b]['pruned_ms']:.3f} ms "
                             f"({r['latency'][b]['speedup']:.2f}x)" for b in args.batches)
            print(f"| {r['criterion']} | {100 * r['acc_base']:.2f}% -> {100 * r['acc_pruned']:.2f}% | "
                  f"{r['params'][0]:,} -> {r['params'][1]:,} | {r['macs'][0]:,} -> {r['macs'][1]:,} | {lat} |")

    if "unstructured" not in skip:
        report["unstructured"] = rows = unstructured(task, args.out, args)
        print("\n## LeNet-300-100 on digits, 92% unstructured sparsity (recipes/unstructured-92.yaml), fine-tuned")
        print("| scope | seed | test acc base -> pruned | sparsity | non-zero | dense ONNX | compressed | "
              "latency b1 (speedup) | latency b256 (speedup) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            la = r["latency"]
            print(f"| {r['scope']} | {r['seed']} | {100 * r['acc_base']:.2f}% -> {100 * r['acc_pruned']:.2f}% | "
                  f"{100 * r['sparsity']:.1f}% | {r['nonzero'][0]:,} -> {r['nonzero'][1]:,} | "
                  f"{r['size_dense'][0]:,} -> {r['size_dense'][1]:,} B | "
                  f"{r['size_compressed'][0]:,} -> {r['size_compressed'][1]:,} B | "
                  f"{la[1]['pruned_ms']:.4f} ms ({la[1]['speedup']:.2f}x) | "
                  f"{la[256]['pruned_ms']:.3f} ms ({la[256]['speedup']:.2f}x) |")
        for scope in args.scopes:
            d = [100 * (r["acc_pruned"] - r["acc_base"]) for r in rows if r["scope"] == scope]
            print(f"\n{scope}: accuracy change vs dense over {len(d)} seeds: mean {np.mean(d):+.2f} points "
                  f"(min {min(d):+.2f}, max {max(d):+.2f}; one test digit = {100 / len(task.x_test):.2f} points)")

    if "sensitivity" not in skip:
        report["sensitivity"] = {}
        for arch, mode in (("lenet300", "unstructured"), ("resnet8", "structured")):
            m, _ = models.load_model(baseline(arch, task, args.out, args.epochs, args.seed))
            curves = sensitivity_curves(m, task, [0.1, 0.3, 0.5, 0.7, 0.9], mode)
            files = write_report(args.out / f"sensitivity_{arch}", curves)
            report["sensitivity"][arch] = [str(f) for f in files]
            print(f"\n{files[0].read_text()}\n(plot: {files[2]})")

    if "early_exit" not in skip:
        m, _ = models.load_model(baseline("resnet8", task, args.out, args.epochs, args.seed))
        res = early_exit_table(m, task, EarlyExit(), args.out / "early_exit_resnet8", args.seed)
        report["early_exit"] = res
        print("\n" + (args.out / "early_exit_resnet8" / "early_exit.md").read_text())

    (args.out / "bench_prune.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults: {args.out / 'bench_prune.json'}")


if __name__ == "__main__":
    main()
