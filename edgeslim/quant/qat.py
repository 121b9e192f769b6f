"""Quantization-aware training building blocks: a fake-quant copy of a model ready to train (BN folded,
every Conv/Linear wrapped, GRU/LSTM/RNN weights fake-quantized per gate row, activation ranges
calibrated), and the export of what it learned as an ONNX QDQ model that ONNX Runtime runs and that
matches PyTorch (recurrent layers weight-only: `edgeslim.quant.recurrent`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.onnxkit.quant import compact_onnx
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.quant import fakequant as fq
from edgeslim.quant.qdq import QLayer, layer_report, write_qdq
from edgeslim.quant.recurrent import recurrent_wrappers, weight_only_recurrent, wrap_recurrent


@dataclass
class QATOutput:
    onnx: Path  # the compact QDQ model
    notes: dict


def prepare_qat(model: nn.Module, calib: np.ndarray, *, weight_bits: int = 8, activation_bits: int = 8,
            per_channel: bool = True, lsq: bool = False, fold_bn: bool = True) -> tuple[nn.Module, nn.Module, list]:
    """(fake-quant model ready to train, BN-folded float reference, folded conv/bn pairs). Weights are
    symmetric `weight_bits` integers (per channel or per tensor), inputs uint8 (`activation_bits`), with
    derived or LSQ-learned scales; activation ranges are calibrated on `calib`."""
    m = copy.deepcopy(model).eval()
    pairs = fq.fold_bn(m, torch.from_numpy(calib[:2].astype(np.float32))) if fold_bn else []
    ref = copy.deepcopy(m)
    fq.wrap_layers(m, lambda _n, layer: fq.QuantWrap(
        layer, fq.WeightQuant(fq.weight_of(layer), weight_bits, per_channel, lsq),
        fq.ActQuant(activation_bits, lsq),
    ))
    wrap_recurrent(m, weight_bits)  # GRU/LSTM/RNN weights, derived per-row scales (quant.recurrent)
    fq.share_input_quantizers(m, torch.from_numpy(calib[:2].astype(np.float32)))
    fq.calibrate(m, calib)
    return m, ref, pairs


def export_qdq(qmodel: nn.Module, ref: nn.Module, task: Task, out_dir: Path, bits: int) -> QATOutput:
    """Write the fake-quant model as a QDQ ONNX into `out_dir/model.onnx`; check it against PyTorch."""
    qmodel.eval()
    baked = fq.unwrap(qmodel)  # float layers holding the quantized weight values, trained biases
    tmp_f, tmp_b, raw = out_dir / "qat_ref.onnx", out_dir / "qat_baked.onnx", out_dir / "qat_raw.onnx"
    export_onnx(ref, task.input_shape, tmp_f)
    export_onnx(baked, task.input_shape, tmp_b)
    layers = {}
    for name, w in fq.wrappers(qmodel).items():
        assert isinstance(w.wq, fq.WeightQuant)
        codes, scale = w.wq.integers(w.fweight.detach())
        s, zp = w.aq.export() if w.aq is not None else (None, 0)
        layers[name] = QLayer(f"{name}.weight", codes, scale, s, zp, bits)
    done = write_qdq(tmp_b, raw, layers)
    recurrent = weight_only_recurrent(raw, raw, bits=bits) if recurrent_wrappers(qmodel) else []
    x = task.x_test[:256].astype(np.float32)
    with torch.no_grad():
        want = qmodel(torch.from_numpy(x)).numpy()
    got = run_batched(session(raw), x)
    diff = float(np.abs(want - got).max())
    agree = float((want.argmax(1) == got.argmax(1)).mean())
    report = layer_report(tmp_f, raw, task.x_val[:128], {f"{n}.weight": bits for n in layers})
    dst = out_dir / "model.onnx"
    compact_onnx(raw, dst)
    for p in (tmp_f, tmp_b, raw):
        p.unlink()
    missing = sorted(set(layers) - set(done))
    notes = {
        "qdq_layers": len(done), "left_float": missing, "parity_max_abs_diff": diff,
        "parity_top1_agreement": agree, "layers": report,
    }
    if recurrent:
        notes["recurrent_weight_only"] = recurrent  # int8 weights, FP32 compute in ORT (quant.recurrent)
    return QATOutput(dst, notes)
