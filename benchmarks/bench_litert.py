"""LiteRT / TFLite Micro benchmark.

Part 1: LeNet-5, DS-CNN and ResNet-8 trained on a built-in task, converted to FP32 and full-integer
INT8 `.tflite`: accuracy in the LiteRT interpreter (test split), file sizes, TFLite Micro arena (head +
tail, recorded by running the model in TFLite Micro on the host), LiteRT latency (XNNPACK, 1 thread),
and the `edgeslim fit` verdict on the Cortex-M4 profile from that arena.

Part 2: the ONNX-graph arena planner (`edgeslim.measure.arena.plan_activation_arena`, the file's own order)
against TFLite Micro's recorded head (its planned, non-persistent section) for every zoo model at its
reference input, FP32 and INT8 (ONNX Runtime QDQ s8s8 for the planner; PT2E INT8 for TFLite Micro).

    .venv/bin/python benchmarks/bench_litert.py --task digits --epochs 30 --out runs/bench_litert
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim import api, models
from edgeslim.data import load_task
from edgeslim.deploy.export import export_onnx
from edgeslim.litert.convert import to_tflite
from edgeslim.litert.footprint import tflite_footprint
from edgeslim.litert.interpreter import LiteRTModel
from edgeslim.litert.micro import MicroModel
from edgeslim.litert.options import ExportOptions
from edgeslim.measure.arena import plan_activation_arena
from edgeslim.measure.core import measure_model
from edgeslim.models.zoo import ZOO
from edgeslim.onnxkit.quant import IntFormat, quantize_static_file
from edgeslim.train import TrainConfig, evaluate


def part1(task_name: str, epochs: int, out: Path, archs: list[str]) -> list[dict]:
    t = load_task(task_name)
    rows = []
    for arch in archs:
        d = out / f"{arch}_{task_name}"
        if not (d / "spec.json").exists():
            api.train(arch, t, d, TrainConfig(epochs=epochs), quiet=True)
        net, _ = models.load_model(d)
        row: dict = {"model": arch, "task": task_name, "torch_accuracy": evaluate(net, t.x_test, t.y_test)}
        for prec in ("fp32", "int8"):
            t0 = time.perf_counter()
            s = to_tflite(net, t.input_shape, d / f"{prec}.tflite", ExportOptions(int8=prec == "int8"),
                          calib=t.calibration(256) if prec == "int8" else None, check=t.x_test[:64])
            lm = LiteRTModel(s["path"])
            acc = lm.accuracy(t.x_test, t.y_test)
            mm = MicroModel(s["path"])
            x = t.x_test[:64]
            micro = np.array([lm.output.dequantize(mm.invoke_raw(lm.input.quantize(x[i : i + 1])))[0]
                              for i in range(len(x))])
            agree = float((micro.argmax(1) == lm.predict(x).argmax(1)).mean())
            fp = tflite_footprint(s["path"])
            meas = measure_model(s["path"], task=None, device="cortex-m4", runs=300)  # the core: timer + fit
            lat, fit = meas.latency, meas.fit
            assert lat is not None and fit is not None
            row[prec] = {
                "accuracy": acc, "size_bytes": s["size_bytes"], "parity": s.get("parity"),
                "tflm_total": fp["tflm_arena_bytes"], "tflm_head": fp["tflm_arena_head_bytes"],
                "tflm_tail": fp["tflm_arena_tail_bytes"], "tflm_vs_litert_top1": agree,
                "litert_p50_ms": lat.p50_ms, "fit_cortex_m4": "fits" if fit.fits else "does not fit: " + "; ".join(
                    fit.reasons), "ram_bytes": fit.ram_bytes, "flash_bytes": fit.flash_bytes, "input": s["input"],
                "convert_s": time.perf_counter() - t0,
            }
            print(arch, prec, json.dumps(row[prec], default=str), flush=True)
        rows.append(row)
    return rows


def part2(out: Path, only: list[str] | None = None) -> list[dict]:
    rows = []
    for name, e in ZOO.items():
        if only and name not in only:
            continue
        shape, classes = e.ref_shape, e.ref_classes or 10
        torch.manual_seed(0)
        net = e.build(shape, classes).eval()
        rng = np.random.default_rng(0)
        calib = rng.random((64, *shape), dtype=np.float32)
        row: dict = {"model": name, "input": "x".join(map(str, shape))}
        with tempfile.TemporaryDirectory() as tmp:
            onnx32 = Path(tmp) / "fp32.onnx"
            export_onnx(net, shape, onnx32)
            onnx8 = Path(tmp) / "int8.onnx"
            quantize_static_file(onnx32, onnx8, calib, IntFormat("int8", reduce_range=False, per_channel=True))
            for prec, onnx_path in (("fp32", onnx32), ("int8", onnx8)):
                try:
                    tfl = to_tflite(net, shape, Path(tmp) / f"{prec}.tflite", ExportOptions(int8=prec == "int8"),
                                    calib=calib if prec == "int8" else None)
                    a = MicroModel(tfl["path"]).arena()
                    ops = tfl["ops"]
                except Exception as ex:  # noqa: BLE001 - record and go on
                    row[prec] = {"error": f"{type(ex).__name__}: {str(ex)[:200]}"}
                    continue
                plan = plan_activation_arena(onnx_path, reorder=False)
                row[prec] = {"planner": plan.arena_bytes, "naive": plan.naive_bytes, "tflm_head": a.head_bytes,
                             "tflm_tail": a.tail_bytes, "tflm_total": a.total_bytes,
                             "diff_pct": 100.0 * (plan.arena_bytes - a.head_bytes) / a.head_bytes, "ops": ops}
                print(name, prec, json.dumps(row[prec]), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_litert"))
    ap.add_argument("--models", default="lenet5,dscnn,resnet8")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--zoo", default="", help="part 2 only for these zoo models (comma separated)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    if not a.skip_part1:
        res["part1"] = part1(a.task, a.epochs, a.out, a.models.split(","))
    if not a.skip_part2:
        res["part2"] = part2(a.out, [m for m in a.zoo.split(",") if m])
    (a.out / "bench_litert.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {a.out / 'bench_litert.json'}")


if __name__ == "__main__":
    main()
