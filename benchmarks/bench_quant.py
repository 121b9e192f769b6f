"""Quantization benchmark on ResNet-8 (built-in task): FP32 vs static INT8 PTQ (format chosen by
measurement), PTQ vs QAT at low weight bits, binary/ternary/pow2/k-means weights, mixed precision,
dynamic INT8 and FP16. Accuracy is top-1 on the task's test split, run in ONNX Runtime; latency is
ONNX Runtime p50 at batch 1, one thread, FP32 and quantized models timed in the same process in
interleaved rounds.

    .venv/bin/python benchmarks/bench_quant.py --task digits --epochs 20 --qat-epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.deploy.export import export_onnx
from edgeslim.measure.core import compare_latency
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.passes import PASSES, RunContext
from edgeslim.passes.qat import QAT, export_via_ort
from edgeslim.quant.qat import export_qdq, prepare_qat
from edgeslim.train import TrainConfig, train_model


def ctx_for(d: Path, spec: dict, prev: Path | None, epochs: int, lr: float) -> RunContext:
    d.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=d, spec=spec, finetune=TrainConfig(epochs=epochs, lr=lr),
                      prev_onnx=prev, quiet=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits", choices=["digits", "mnist1d"])
    ap.add_argument("--epochs", type=int, default=20, help="baseline training epochs")
    ap.add_argument("--qat-epochs", type=int, default=5)
    ap.add_argument("--qat-bits", type=int, default=4)
    ap.add_argument("--lowbit-epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=60, help="interleaved latency rounds (x20 runs each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    task = load_task(a.task, seed=a.seed)
    spec = models.make_spec("resnet8", task.input_shape, task.num_classes)
    model = models.build_model(spec)
    t0 = time.perf_counter()
    train_model(model, task, TrainConfig(epochs=a.epochs, lr=3e-3, seed=a.seed), quiet=True)
    print(f"# ResNet-8 on {a.task} (input {task.input_shape}, {task.num_classes} classes), trained {a.epochs} "
          f"epochs in {time.perf_counter() - t0:.0f} s; test n={len(task.x_test)}")
    work = Path(tempfile.mkdtemp(prefix="bench_quant_"))
    fp32 = work / "fp32.onnx"
    export_onnx(model, task.input_shape, fp32, check=task.x_test[:64])
    rows: list[dict] = []

    def add(name: str, path: Path, size: int | None = None, note: str = "") -> None:
        rows.append({"method": name, "onnx": path, "test_acc": onnx_accuracy(path, task.x_test, task.y_test),
                     "size_bytes": size or path.stat().st_size, "note": note})

    add("FP32", fp32, note="ONNX, float32")
    # Static INT8 PTQ, format chosen by measurement.
    res = PASSES["quantize_int8"].fn(None, task, PASSES["quantize_int8"].config(),
                                     ctx_for(work / "ptq", spec, fp32, 0, 1e-3))
    tried = ", ".join(f"{r['format']} {r['latency_ms_p50']:.4f} ms/{r['val_accuracy'] * 100:.1f}%"
                      for r in res.notes["tried"])
    add("INT8 PTQ (static QDQ)", res.onnx, note=f"chose {res.notes['format'].split()[-1]}; tried: {tried}")
    ptq_path = res.onnx
    # Dynamic INT8 and FP16 (ORT tooling).
    for name, label in (("quantize_dynamic", "INT8 dynamic"), ("quantize_fp16", "FP16")):
        r = PASSES[name].fn(None, task, PASSES[name].config(), ctx_for(work / name, spec, fp32, 0, 1e-3))
        add(label, r.onnx, note=r.notes.get("note", "")[:60])
    # PTQ vs QAT at low weight bits (w{b}a8, per channel), both exported as QDQ and run in ORT.
    calib = task.calibration(256, a.seed)
    for bits in sorted({a.qat_bits, 8}):
        for lsq in (False, True):
            cfg = QAT(weight_bits=bits, lsq=lsq)
            qm, ref, _ = prepare_qat(model, calib, weight_bits=bits, lsq=lsq)
            if not lsq:
                (work / f"ptq{bits}").mkdir(parents=True, exist_ok=True)
                out = export_qdq(copy.deepcopy(qm), ref, task, work / f"ptq{bits}", bits)
                add(f"PTQ w{bits}a8 (fake-quant calib, no training)", out.onnx,
                    note=f"parity {out.notes['parity_max_abs_diff']:.2g}")
            c = ctx_for(work / f"qat{bits}{lsq}", spec, None, a.qat_epochs, 5e-4)
            c.finetune_model(qm, task)
            out = export_qdq(qm, ref, task, c.stage_dir, bits)
            add(f"QAT w{bits}a8{' LSQ' if lsq else ''} ({a.qat_epochs} ep)", out.onnx,
                note=f"exact QDQ; parity vs PyTorch max|diff| {out.notes['parity_max_abs_diff']:.2g}, "
                     f"top-1 agree {out.notes['parity_top1_agreement'] * 100:.1f}%")
            if not lsq:
                o2 = export_via_ort(qm, task, c, cfg, out)
                add(f"QAT w{bits}a8 ({a.qat_epochs} ep) -> ORT fused", o2.onnx,
                    note=f"{o2.notes['ort_format']}; parity max|diff| {o2.notes['parity_max_abs_diff']:.2g}, "
                         f"top-1 agree {o2.notes['parity_top1_agreement'] * 100:.1f}%")
                shutil.copyfile(o2.onnx, c.stage_dir / "ort.onnx")
                rows[-1]["onnx"] = c.stage_dir / "ort.onnx"
                (c.stage_dir / "model_exact.onnx").rename(out.onnx)
    # Low-bit / non-uniform weights (simulated: FP32 ONNX holds the quantized values; size = packed file).
    for scheme, bits in (("binary", 1), ("ternary", 2), ("pow2", 4), ("kmeans", 4)):
        cfg = PASSES["lowbit"].config(scheme=scheme, bits=max(bits, 2))
        c = ctx_for(work / f"lb_{scheme}", spec, None, a.lowbit_epochs, 1e-3)
        r = PASSES["lowbit"].fn(copy.deepcopy(model), task, cfg, c)
        export_onnx(r.model, task.input_shape, c.stage_dir / "model.onnx")
        add(f"{scheme} w{bits} (simulated)", c.stage_dir / "model.onnx", size=r.artifact.stat().st_size,
            note=f"first/last layer 8-bit; avg {r.notes['avg_weight_bits']} bits/weight, packed file")
    c = ctx_for(work / "mixed", spec, None, a.lowbit_epochs, 1e-3)
    r = PASSES["mixed_precision"].fn(copy.deepcopy(model), task, PASSES["mixed_precision"].config(
        budget_fraction=0.1), c)
    export_onnx(r.model, task.input_shape, c.stage_dir / "model.onnx")
    add("mixed 2/4/8 (simulated)", c.stage_dir / "model.onnx", size=r.artifact.stat().st_size,
        note=f"size budget 10% of FP32; avg {r.notes['avg_weight_bits']} bits/weight")
    # Latency: every ORT-runnable format against FP32, same process, interleaved.
    runnable = {row["method"]: row["onnx"] for row in rows if "simulated" not in row["method"]}
    lat = {k: v.p50_ms for k, v in compare_latency(runnable, {"input": task.x_test[:1]}, rounds=a.rounds,
                                                   per_round=20).items()}
    base = rows[0]
    print(f"\n{'method':46s} {'test acc':>8s} {'Δ pts':>6s} {'size B':>8s} {'x smaller':>9s} "
          f"{'p50 ms':>8s} {'FP32 p50':>8s} {'speed-up':>8s}  note")
    for row in rows:
        p50 = lat.get(row["method"])
        row.update(delta_pts=(row["test_acc"] - base["test_acc"]) * 100, ratio=base["size_bytes"] / row["size_bytes"],
                   p50_ms=p50, fp32_p50_ms=lat["FP32"])
        p = f"{p50:8.4f} {lat['FP32']:8.4f} {lat['FP32'] / p50:7.2f}x" if p50 else f"{'-':>8s} {'-':>8s} {'-':>8s}"
        print(f"{row['method']:46s} {row['test_acc'] * 100:7.2f}% {row['delta_pts']:+6.2f} {row['size_bytes']:8d} "
              f"{row['ratio']:8.2f}x {p}  {row['note']}")
    ptq = next(r for r in rows if r["method"].startswith("PTQ w" + str(a.qat_bits)))
    qat = next(r for r in rows if r["method"].startswith(f"QAT w{a.qat_bits}a8 ("))
    gap = base["test_acc"] - ptq["test_acc"]
    rec = (qat["test_acc"] - ptq["test_acc"]) / gap if gap > 0 else float("nan")
    print(f"\nw{a.qat_bits} PTQ gap {gap * 100:.2f} pts; QAT recovers "
          + (f"{rec * 100:.0f}% of it" if gap > 0 else "n/a (no gap)")
          + f"; INT8 PTQ file {base['size_bytes'] / ptq_path.stat().st_size:.2f}x smaller")
    print("latency: ONNX Runtime 1 thread, batch 1, interleaved; the machine is shared, so absolute ms vary")
    if a.json:
        a.json.write_text(json.dumps([{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}
                                      for r in rows], indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
