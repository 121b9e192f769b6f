"""`edgeslim export`: a model folder to a deployable file: ONNX (FP32, or INT8 QDQ s8s8), `.tflite` (FP32
or full-integer INT8, `edgeslim.litert`) or a C array for TFLite Micro (also from a `.tflite` file); an ONNX
file to a repaired, checked ONNX copy.

Every export is checked against the PyTorch model (INT8 `.tflite` against the fake-quant model) on the
samples of `--inputs`, else the task's test inputs, else random inputs; with a task it also reports accuracy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.litert.export import tflite_export, tflite_to_c
from edgeslim.litert.options import ExportOptions
from edgeslim.onnxkit.inputs import single_input_samples
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


def _sample_shape(shapes: Sequence[str]) -> tuple[int, ...]:
    """The sample shape from `--shape NAME=N,D1,...` (the model's one input; N is the batch)."""
    if len(shapes) != 1:
        raise EdgeslimError(f"--shape: a model folder has one input; got {len(shapes)} --shape options")
    _, sep, val = shapes[0].rpartition("=")
    try:
        dims = tuple(int(v) for v in val.split(","))
    except ValueError:
        dims = ()
    if not sep or len(dims) < 2 or min(dims) < 1:
        raise EdgeslimError(f"--shape {shapes[0]!r}: expected NAME=N,D1,... with the batch first, e.g. input=1,1,8,8")
    return dims[1:]


def export_model(
    model: Path, fmt: Format, out: Path, options: ExportOptions | None = None, *, task: str | None = None,
    inputs: Path | None = None, shapes: Sequence[str] = (),
) -> dict:
    """Export `model` (an edgeslim model folder; or a `.tflite` file for `fmt="c"`) as `options`
    (`ExportOptions`: int8, calibration, per-channel, force, min_arena, device, ...) say. Returns a summary.
    `inputs`: an .npz of samples for the parity check (and INT8 calibration when no task is known);
    `shapes`: `NAME=N,D1,...` when the folder does not record its input shape."""
    o = options or ExportOptions()
    int8, seed, calibration_samples = o.int8, o.seed, o.calibration_samples
    model, out = Path(model), Path(out)
    if fmt not in ("onnx", "tflite", "c"):
        raise EdgeslimError(f"unknown format '{fmt}'; valid: c, onnx, tflite")
    if fmt == "c" and model.suffix == ".tflite":
        return tflite_to_c(model, out)
    staged = models.io.onnx_stage(model)  # a stage of a run on an ONNX file: its model.onnx, its sample shape
    if staged is not None or (model.is_file() and model.suffix == ".onnx"):
        src, shapes = (staged[0], list(shapes) or ([] if inputs else staged[1])) if staged else (model, list(shapes))
        if fmt != "onnx":
            raise EdgeslimError(f"{model}: edgeslim converts to .tflite from PyTorch, not from ONNX; export an ONNX "
                                "file with --format onnx (a repaired, checked copy), or export a PyTorch model folder")
        from edgeslim.deploy.export import reexport_onnx

        return reexport_onnx(src, out, inputs, shapes)
    if model.is_file():
        raise EdgeslimError(f"{model}: export takes an edgeslim model folder, an ONNX file (--format onnx) or a "
                            ".tflite file (--format c)")
    net, spec = models.load_model(model, trust_pickle=o.trust_pickle)
    shape = tuple(spec.get("input_shape") or ())
    t = _task_for(spec, task)
    if shapes:
        given = _sample_shape(shapes)
        if shape and given != shape:
            raise EdgeslimError(f"--shape {shapes[0]}: the model takes samples of shape {list(shape)}")
        shape = shape or given
    if not shape:
        if t is None:
            raise EdgeslimError(f"{model}: the input shape is unknown; pass --task or --shape input=1,...")
        shape = t.input_shape
    if t is not None and t.input_shape != shape:
        raise EdgeslimError(f"{model}: model expects inputs of shape {shape} but task '{t.name}' has {t.input_shape}")
    if t is not None and spec.get("num_classes") and spec["num_classes"] != t.num_classes:
        raise EdgeslimError(f"{model}: model has {spec['num_classes']} classes but task '{t.name}' has {t.num_classes}")
    x = single_input_samples(Path(inputs), shape) if inputs is not None else None
    if x is not None:
        check = x[:CHECK_SAMPLES]
    elif t is not None:
        check = t.x_test[:CHECK_SAMPLES]
    else:
        check = np.random.default_rng(seed).random((16, *shape), dtype=np.float32)
    if int8 and t is None and x is None:
        raise EdgeslimError("--int8 needs a representative dataset: pass --task (the data the model was trained on) "
                            "or --inputs FILE.npz")
    calib = t.calibration(calibration_samples, seed) if t is not None else (x[:calibration_samples] if x is not None
                                                                            else None)
    if fmt == "onnx":
        return _export_onnx(net, shape, out, int8, t, check, calib, o.per_channel)
    tfl = out if fmt == "tflite" else out.with_suffix(".tflite")
    summary = tflite_export(net, shape, tfl, o, task=t, check=check, calib=calib)
    if fmt == "c":
        c = tflite_to_c(tfl, out, arena=summary.get("tflm_arena"))
        summary.update(c=c["c"], h=c["h"])
    return summary


def _export_onnx(net, shape, out: Path, int8: bool, t, check, calib, per_channel: bool = True) -> dict:
    if not int8:
        summary = {"format": "onnx", "precision": "fp32", "path": str(out),
                   **export_onnx(net, shape, out, check=check)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(net, shape, fp32, check=check)
            fmt = IntFormat("int8", reduce_range=False, per_channel=per_channel)
            quantize_static_file(fp32, out, calib, fmt)
        summary = {"format": "onnx", "precision": "int8 (QDQ s8s8)", "path": str(out)}
    summary["size_bytes"] = out.stat().st_size
    if t is not None:
        summary["accuracy"] = round(onnx_accuracy(out, t.x_test, t.y_test), 6)
    return summary
