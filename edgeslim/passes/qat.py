"""`qat`: quantization-aware training: BN folding, fake-quant fine-tuning with a straight-through estimator
(derived or LSQ-learned scales, `quant.qat`), then export of the learned scales as an ONNX QDQ model.

It consumes the PyTorch model and produces the QDQ ONNX, so the stage is ONNX-only and only passes that
consume ONNX may follow, which the recipe parser enforces. Fine-tuning goes through `ctx.finetune_model`, so pruning masks (`keep_sparsity`)
and distillation losses carried by earlier passes apply during QAT; a pruned weight stays exactly 0
because symmetric quantization maps 0 to code 0.

What the fake quantization covers: Conv and Linear layers (int8 weights and uint8 input activations,
exported as QDQ that ONNX Runtime runs with integer kernels) and the weights of GRU/LSTM/RNN layers
(int8, one scale per gate row; `edgeslim.quant.recurrent`). ONNX Runtime has no integer GRU kernel,
so recurrent layers export weight-only (int8 weights + DequantizeLinear, FP32 compute) and their
hidden-state activations are not fake-quantized; the notes list them under `recurrent_weight_only`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx
import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.passes.quantize_int8 import QuantizeInt8, quantize_int8
from edgeslim.quant import fakequant as fq
from edgeslim.quant.qat import QATOutput, export_qdq, prepare_qat
from edgeslim.quant.recurrent import recurrent_wrappers
from edgeslim.train import TrainConfig, evaluate


class QAT(PassConfig):
    weight_bits: int = Field(8, ge=2, le=8, description="weight bit width (codes stored in int8 in ONNX)")
    activation_bits: Literal[8] = 8  # uint8 QuantizeLinear in ONNX
    per_channel: bool = True
    lsq: bool = False  # learn the step sizes (LSQ) instead of deriving them from ranges
    fold_bn: bool = True
    calibration_samples: int = Field(256, ge=1)
    # exact: write the learned scales as QDQ (matches PyTorch; residual adds stay float, so ORT fuses only
    # part of the graph). ort: hand the QAT-trained weights to quantize_int8 (measured format, ORT
    # re-calibrates activation ranges, fully fused kernels); weights already lie on the learned grid.
    export: Literal["exact", "ort"] = "exact"
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


def export_via_ort(qm: nn.Module, task: Task, ctx: RunContext, cfg: QAT, exact: QATOutput) -> QATOutput:
    """Re-export the QAT-trained model through ORT's static quantizer (fully fused QDQ)."""
    baked = ctx.stage_dir / "qat_baked.onnx"
    export_onnx(fq.unwrap(qm.eval()), task.input_shape, baked)
    exact.onnx.rename(ctx.stage_dir / "model_exact.onnx")
    consumer = {n.input[1]: n.input[0] for n in onnx.load(str(baked)).graph.node if len(n.input) > 1}
    learned = {consumer[f"{name}.weight"]: w.aq.export() for name, w in fq.wrappers(qm).items()
               if w.aq is not None and f"{name}.weight" in consumer}
    res = quantize_int8(None, task, QuantizeInt8(calibration_samples=cfg.calibration_samples),
                        dataclasses.replace(ctx, prev_onnx=baked), act_overrides=learned)
    baked.unlink()
    assert res.onnx is not None
    x = task.x_test[:256].astype(np.float32)
    with torch.no_grad():
        want = qm(torch.from_numpy(x)).numpy()
    got = run_batched(session(res.onnx), x)
    ort_notes = {k: v for k, v in res.notes.items() if k != "format"}
    notes = {**exact.notes, **ort_notes, "ort_format": res.notes["format"], "learned_act_scales": len(learned),
             "exact_qdq": "model_exact.onnx (learned scales, matches PyTorch)",
             "parity_max_abs_diff": float(np.abs(want - got).max()),
             "parity_top1_agreement": float((want.argmax(1) == got.argmax(1)).mean())}
    notes["layers"] = res.notes["layers"]
    return QATOutput(res.onnx, notes)


def check_calibration_shape(calib: np.ndarray, spec: dict, where: str) -> None:
    want = tuple(spec.get("input_shape", ()))
    if want and tuple(calib.shape[1:]) != want:
        raise EdgeslimError(
            f"{where}: calibration data has sample shape {tuple(calib.shape[1:])} but the model expects {want}"
        )


def fake_quant_accuracy(m: nn.Module, task: Task) -> float:
    return round(evaluate(m, task.x_val, task.y_val), 6)


@register("qat", QAT, consumes="torch", produces="onnx")
def qat(model: nn.Module | None, task: Task, cfg: QAT, ctx: RunContext) -> PassResult:
    """Quantization-aware training (fake quant + STE, optional LSQ) exported as an ONNX QDQ model."""
    if model is None:
        raise EdgeslimError("qat: needs the PyTorch model, but an earlier pass made the model ONNX-only; "
                            "put qat before ONNX passes such as quantize_int8")
    calib = task.calibration(cfg.calibration_samples, ctx.seed)
    check_calibration_shape(calib, ctx.spec, "qat")
    qm, ref, pairs = prepare_qat(model, calib, weight_bits=cfg.weight_bits, activation_bits=cfg.activation_bits,
                             per_channel=cfg.per_channel, lsq=cfg.lsq, fold_bn=cfg.fold_bn)
    before = fake_quant_accuracy(qm, task)
    float_acc = fake_quant_accuracy(ref, task)
    hist = ctx.finetune_model(qm, task, cfg.finetune, desc="qat")
    out = export_qdq(qm, ref, task, ctx.stage_dir, cfg.weight_bits)
    if cfg.export == "ort":
        out = export_via_ort(qm, task, ctx, cfg, out)
    notes = {
        "format": (f"{out.notes['ort_format']} (ORT) after " if cfg.export == "ort" else "")
        + f"QDQ QAT w{cfg.weight_bits} (int8 storage) / a8 uint8, "
                  f"{'per-channel' if cfg.per_channel else 'per-tensor'}, {'LSQ' if cfg.lsq else 'derived'} scales",
        "bn_folded": len(pairs), "float_val_accuracy": float_acc, "ptq_val_accuracy": before,
        "val_accuracy": round(hist["val_accuracy"], 6), **out.notes,
    }
    if cfg.weight_bits < 8:
        n_w = sum(w.fweight.numel() for w in fq.wrappers(qm).values()) + sum(
            getattr(r.inner, k).numel() for r in recurrent_wrappers(qm).values() for k in r.wq)
        notes["packed_weight_bytes_estimated"] = int(np.ceil(n_w * cfg.weight_bits / 8))
        notes["storage_note"] = (f"{cfg.weight_bits}-bit codes are stored in int8 in the ONNX file (ONNX Runtime "
                                 f"runs int8 kernels); packed {cfg.weight_bits}-bit storage would need a custom format")
    write_json(ctx.stage_dir / "quant_report.json", notes)
    return PassResult(None, onnx=out.onnx, notes=notes)
