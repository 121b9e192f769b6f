"""`edgeslim export`: a model folder to ONNX, `.tflite` (FP32 or full-integer INT8) or a C array.

Every export is checked against the PyTorch model (INT8 `.tflite` against the fake-quant model) on the
task's test inputs, or on random inputs when no task is known. A `.tflite` export also reports its
accuracy in the LiteRT interpreter and its TFLite Micro arena, and writes them beside the file as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json

Format = Literal["onnx", "tflite", "c"]
CHECK_SAMPLES = 64
MICRO_CHECK = 16  # samples also run through TFLite Micro


def _task_for(spec: dict, task: str | None):
    """The task given, else the one the model was trained on when it can be loaded by name or path."""
    from edgeslim.data import load_task

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
    from edgeslim import models

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
    import tempfile

    from edgeslim.deploy.export import export_onnx
    from edgeslim.onnxkit.session import onnx_accuracy

    if not int8:
        summary = {"format": "onnx", "precision": "fp32", "path": str(out),
                   **export_onnx(net, shape, out, check=check)}
    else:
        from edgeslim.onnxkit.quant import IntFormat, quantize_static_file

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


def tflite_export(net, shape, out: Path, *, int8: bool, task=None, check=None, calibration_samples: int = 256,
                  seed: int = 0, micro: bool = True, per_channel: bool = True) -> dict:
    """Convert, check parity, measure accuracy in LiteRT (with a task) and the TFLite Micro arena."""
    from edgeslim.litert import available
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.interpreter import LiteRTModel

    calib = task.calibration(calibration_samples, seed) if (int8 and task is not None) else None
    summary = to_tflite(net, shape, out, int8=int8, calib=calib, check=check, per_channel=per_channel)
    if task is not None:
        summary["accuracy"] = round(LiteRTModel(out).accuracy(task.x_test, task.y_test), 6)
        summary["task"] = task.name
    if micro and available("micro"):
        from edgeslim.litert.micro import MicroModel

        mm = MicroModel(out)
        if check is not None and len(check):  # TFLite Micro (reference kernels) vs LiteRT (XNNPACK)
            lm = LiteRTModel(out)
            x = np.asarray(check[:MICRO_CHECK], np.float32)
            got = np.stack([lm.output.dequantize(mm.invoke_raw(lm.input.quantize(x[i : i + 1])))[0]
                            for i in range(len(x))])
            summary["tflm_top1_agreement"] = float((got.argmax(1) == lm.predict(x).argmax(1)).mean())
            summary["tflm_checked_samples"] = len(x)
        summary["tflm_arena"] = mm.arena().as_dict()
    write_json(out.with_suffix(".json"), summary)
    return summary


def tflite_to_c(tflite: Path, out: Path, arena: dict | None = None) -> dict:
    """The `.c`/`.h` pair for a `.tflite`, with the TFLite Micro arena recorded for it (run here if needed)."""
    from edgeslim.litert import require
    from edgeslim.litert.carray import write_c_array

    require("micro")
    if arena is None:
        from edgeslim.litert.micro import tflm_arena

        arena = tflm_arena(tflite).as_dict()
    c, h = write_c_array(tflite, out, arena_bytes=arena["total_bytes"], arena_head_bytes=arena["head_bytes"])
    return {"format": "c", "tflite": str(tflite), "c": str(c), "h": str(h), "size_bytes": tflite.stat().st_size,
            "tflm_arena": arena}


__all__ = ["export_model", "tflite_export", "tflite_to_c"]
