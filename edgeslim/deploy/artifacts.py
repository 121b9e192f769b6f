"""`edgeslim export`: a model folder to a deployable file: ONNX (FP32, or INT8 QDQ s8s8), `.tflite` (FP32
or full-integer INT8, `edgeslim.litert`) or a C array for TFLite Micro (also from a `.tflite` file).

Every export is checked against the PyTorch model (INT8 `.tflite` against the fake-quant model) on the
task's test inputs, or on random inputs when no task is known; with a task it also reports accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.litert.export import tflite_export, tflite_to_c
from edgeslim.onnxkit.quant import IntFormat, quantize_static_file
from edgeslim.onnxkit.session import onnx_accuracy

Format = Literal["onnx", "tflite", "c"]
CHECK_SAMPLES = 64


def _task_for(spec: dict, task: str | None):
    """The task given, else the one the model was trained on when it can be loaded by name or path."""
    if task:
        return load_task(task)
    trained_on = (spec.get("extra") or {}).get("metrics", {}).get("task")
    if trained_on:
        try:
            return load_task(trained_on)
        except EdgeslimError:
            return None
    return None


def export_model(
    model: Path, fmt: Format, out: Path, *, int8: bool = False, task: str | None = None,
    calibration_samples: int = 256, trust_pickle: bool = False, seed: int = 0, per_channel: bool = True,
) -> dict:
    """Export `model` (an edgeslim model folder; or a `.tflite` file for `fmt="c"`). Returns a summary."""
    model, out = Path(model), Path(out)
    if fmt not in ("onnx", "tflite", "c"):
        raise EdgeslimError(f"unknown format '{fmt}'; valid: c, onnx, tflite")
    if fmt == "c" and model.suffix == ".tflite":
        return tflite_to_c(model, out)
    net, spec = models.load_model(model, trust_pickle=trust_pickle)
    shape = tuple(spec.get("input_shape") or ())
    t = _task_for(spec, task)
    if not shape:
        if t is None:
            raise EdgeslimError(f"{model}: the input shape is unknown; pass --task")
        shape = t.input_shape
    if t is not None and t.input_shape != shape:
        raise EdgeslimError(f"{model}: model expects inputs of shape {shape} but task '{t.name}' has {t.input_shape}")
    if t is not None and spec.get("num_classes") and spec["num_classes"] != t.num_classes:
        raise EdgeslimError(f"{model}: model has {spec['num_classes']} classes but task '{t.name}' has {t.num_classes}")
    if t is not None:
        check = t.x_test[:CHECK_SAMPLES]
    else:
        check = np.random.default_rng(seed).random((16, *shape), dtype=np.float32)
    if int8 and t is None:
        raise EdgeslimError("--int8 needs a representative dataset: pass --task (the data the model was trained on)")
    if fmt == "onnx":
        return _export_onnx(net, shape, out, int8, t, check, calibration_samples, seed, per_channel)
    tfl = out if fmt == "tflite" else out.with_suffix(".tflite")
    summary = tflite_export(net, shape, tfl, int8=int8, task=t, check=check,
                            calibration_samples=calibration_samples, seed=seed, per_channel=per_channel)
    if fmt == "c":
        c = tflite_to_c(tfl, out, arena=summary.get("tflm_arena"))
        summary.update(c=c["c"], h=c["h"])
    return summary


def _export_onnx(net, shape, out: Path, int8: bool, t, check, calibration_samples: int, seed: int,
                 per_channel: bool = True) -> dict:
    if not int8:
        summary = {"format": "onnx", "precision": "fp32", "path": str(out),
                   **export_onnx(net, shape, out, check=check)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(net, shape, fp32, check=check)
            fmt = IntFormat("int8", reduce_range=False, per_channel=per_channel)
            quantize_static_file(fp32, out, t.calibration(calibration_samples, seed), fmt)
        summary = {"format": "onnx", "precision": "int8 (QDQ s8s8)", "path": str(out)}
    summary["size_bytes"] = out.stat().st_size
    if t is not None:
        summary["accuracy"] = round(onnx_accuracy(out, t.x_test, t.y_test), 6)
    return summary
