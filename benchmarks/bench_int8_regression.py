"""INT8 regression benchmark: `recipes/int8-ptq.yaml` on the zoo's models, size and speed against FP32.

Why: the recipe once went backwards on ResNet-8 (3.78x smaller / 1.68x faster on 2026-11-29, then
3.46x / 1.48x) without any test noticing; this table is the check (issue 27). Per model: a baseline is
trained (fixed seed), the recipe is run as `edgeslim run` runs it, and the baseline's and the INT8 stage's
ONNX files are timed at batch 1 with one thread, interleaved in one loop by the measurement core
(`measure.core.compare_latency`), so the speed-up is a ratio of medians from the same rounds. Size: the
stage files on disk. Accuracy: top-1 on the test split in ONNX Runtime.

    .venv/bin/python benchmarks/bench_int8_regression.py --out runs/bench_int8

Rows: resnet8 on `digits` (1x8x8) and on `digits` upsampled to 28x28 (`digits28`, the MNIST-sized
stand-in the issue's checker uses: there the stem's INT8 kernel matters), dscnn and lenet5 on digits,
cnn1d on mnist1d. Everything printed is measured in this run; the machine is shared, absolute ms move
with load, the interleaved ratios are the figures to compare.
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

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "int8-ptq.yaml"
JOBS = {  # name -> (arch, task)
    "resnet8-digits": ("resnet8", "digits"),
    "resnet8-digits28": ("resnet8", "digits28"),
    "dscnn-digits": ("dscnn", "digits"),
    "lenet5-digits": ("lenet5", "digits"),
    "cnn1d-mnist1d": ("cnn1d", "mnist1d"),
}
TARGETS = {"resnet8-digits28": (3.7, 1.6)}  # issue 27: smaller x, faster x on the checker's input size


def task_for(name: str, out: Path):
    """A built-in task, or `digits28`: the digits upsampled (bilinear) to 28x28, written as an .npz once."""
    if name != "digits28":
        return load_task(name)
    path = out / "digits28.npz"
    if not path.exists():
        import torch.nn.functional as F

        t = load_task("digits")

        def up(x: np.ndarray) -> np.ndarray:
            return F.interpolate(torch.from_numpy(x.astype(np.float32)), size=(28, 28), mode="bilinear",
                                 align_corners=False).numpy()

        np.savez_compressed(path, x_train=up(np.concatenate([t.x_train, t.x_val])),
                            y_train=np.concatenate([t.y_train, t.y_val]), x_test=up(t.x_test), y_test=t.y_test)
    return load_task(str(path))


def job(name: str, out: Path, epochs: int, seed: int, rounds: int) -> dict:
    arch, tname = JOBS[name]
    task = task_for(tname, out)
    base = train_baseline(arch, task, out / f"{name}_base", epochs, seed)
    shutil.rmtree(out / name, ignore_errors=True)  # a fresh run: an existing finished one would be resumed
    t0 = time.perf_counter()
    res = run_recipe(parse_recipe(RECIPE.read_text(), "int8-ptq"), base, task, out / name, seed=seed, quiet=True,
                     force=True)
    wall = time.perf_counter() - t0
    b, q = res["stages"][0], res["stages"][-1]
    paths = {"fp32": out / name / b["onnx"], "int8": out / name / q["onnx"]}
    x = task.x_test[:1].astype(np.float32)
    lat = compare_latency(paths, {"input": x}, rounds=rounds, per_round=20, warmup=10)
    notes = q.get("notes", {})
    return {"job": name, "acc_fp32": b["accuracy"], "acc_int8": q["accuracy"], "bytes_fp32": b["size_bytes"],
            "bytes_int8": q["size_bytes"], "smaller": b["size_bytes"] / q["size_bytes"],
            "ms_fp32": lat["fp32"].p50_ms, "ms_int8": lat["int8"].p50_ms,
            "speedup": lat["fp32"].p50_ms / lat["int8"].p50_ms, "format": notes.get("format", ""),
            "float_layers": notes.get("float_layers", {}), "recipe_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_int8"))
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma list of {', '.join(JOBS)}")
    ap.add_argument("--epochs", type=int, default=20, help="baseline training epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds (20 calls each) per job")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [job(j, args.out, args.epochs, args.seed, args.rounds) for j in args.jobs.split(",") if j]
    load = os.getloadavg()
    print(f"\n## int8-ptq regression (ORT 1 thread, batch 1, interleaved; load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f})")
    print("| model / task | test acc FP32 -> INT8 | bytes FP32 -> INT8 | smaller | p50 FP32 -> INT8 | speed-up "
          "| written | layers kept float | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tgt = TARGETS.get(r["job"])
        verdict = "" if tgt is None else (
            f">= {tgt[0]}x / {tgt[1]}x: " + ("met" if r["smaller"] >= tgt[0] and r["speedup"] >= tgt[1] else "NOT MET"))
        fl = ("every layer (w8)" if r["format"].startswith("w8") else
              ", ".join(f"{k} ({v})" for k, v in r["float_layers"].items()) or "none")
        print(f"| {r['job']} | {100 * r['acc_fp32']:.2f}% -> {100 * r['acc_int8']:.2f}% | {r['bytes_fp32']:,} -> "
              f"{r['bytes_int8']:,} | {r['smaller']:.2f}x | {r['ms_fp32']:.4f} -> {r['ms_int8']:.4f} ms | "
              f"{r['speedup']:.2f}x | {r['format']} | {fl} | {verdict} |")
    (args.out / "bench_int8_regression.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"\nresults: {args.out / 'bench_int8_regression.json'}")


if __name__ == "__main__":
    main()
