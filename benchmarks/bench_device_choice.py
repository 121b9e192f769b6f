"""INT8 decisions made for the run's device (issue 25): `recipes/int8-ptq.yaml` on the three MLPerf Tiny-like
zoo models, once for `--device cortex-m4` (decided from the calibrated cost model) and once for `--device host`
(timed here); then `edgeslim fit --device cortex-m4` of each result beside MLPerf Tiny v0.5's published
STM32L4R5 energies. Prints one table.

The tasks are synthetic (class-dependent patterns plus noise, seeded; no downloads), sized as the MLPerf Tiny
inputs: 3x32x32 / 10 classes, 1x49x10 / 12 classes, 3x96x96 / 2 classes. Energies are *estimated*
(`estimated:calibrated@cortex-m4`, the profile calibrated on MLPerf Tiny's ResNet-8).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_device_choice.py [--models resnet8,dscnn,mobilenetv1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # zoo name -> (input shape, classes, samples, published STM32L4R5 energy per inference, mJ)
    "resnet8": ((3, 32, 32), 10, 2000, 29.2),
    "dscnn": ((1, 49, 10), 12, 2000, 7.37),
    "mobilenetv1": ((3, 96, 96), 2, 1000, 24.3),
}


def make_task(path: Path, shape: tuple[int, ...], classes: int, n: int, seed: int = 0) -> None:
    """A learnable synthetic task: each class a fixed random pattern, samples = pattern + noise."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, (classes, *shape)).astype(np.float32)
    y = np.arange(n) % classes
    x = protos[y] + rng.normal(0, 1.5, (n, *shape)).astype(np.float32)
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))


def cli(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", *args, "--json"], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise SystemExit(f"edgeslim {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def stage_notes(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    return [s for s in res["stages"] if s.get("name") == "quantize_int8"][-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--devices", default="cortex-m4,host")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = a.keep or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        for name in a.models.split(","):
            shape, classes, n, published = MODELS[name]
            task = tmp / f"{name}.npz"
            make_task(task, shape, classes, n)
            cli("train", "--model", name, "--task", str(task), "--out", str(tmp / f"{name}.model"),
                "--epochs", str(a.epochs))
            for dev in a.devices.split(","):
                run = tmp / f"{name}.{dev}.run"
                cli("run", str(ROOT / "recipes" / "int8-ptq.yaml"), "--model", str(tmp / f"{name}.model"),
                    "--task", str(task), "--out", str(run), "--device", dev, "--force")
                st = stage_notes(run)
                notes = st.get("notes", {})
                onnx_path = next(run.glob("stages/*_quantize_int8/model.onnx"))
                fit = cli("fit", str(onnx_path), "--device", "cortex-m4", "--rate", "1/min")
                rows.append((name, dev, notes.get("format", "?"), len(notes.get("float_layers", {})),
                             fit.get("energy_mj"), published, notes.get("speed_decisions", "?")))
    print(f"{'model':12} {'--device':10} {'int8-ptq pick':55} {'float':>5} {'fit mJ':>8} {'MLPerf':>7} {'ratio':>6}"
          "  speed decisions")
    for name, dev, fmt, nf, mj, pub, how in rows:
        r = f"{mj / pub:.2f}x" if mj else "-"
        print(f"{name:12} {dev:10} {fmt[:55]:55} {nf:5d} {mj or float('nan'):8.2f} {pub:7.2f} {r:>6}  {how}")


if __name__ == "__main__":
    main()
