"""Measure one pipeline stage: accuracy in ONNX Runtime, counts, size on disk, latency, and the extras
in `STAGE_EXTRAS` (deploy figures, compressed size, a .tflite beside the ONNX).

Measurement never changes a model. Each extra is `fn(onnx_path, task) -> dict` and labels its estimates;
the list is fixed here, so one file says what a stage's metrics hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from edgeslim.data import Task
from edgeslim.formats.sparse import compressed_size
from edgeslim.litert.export import TFLITE_FILE, tflite_fields
from edgeslim.measure.latency import onnx_latency
from edgeslim.models.counts import count_macs, count_params
from edgeslim.onnxkit.session import onnx_accuracy


def measure_stage(
    onnx_path: Path, task: Task, model: nn.Module | None, size_path: Path | None = None,
    latency_runs: int = 200, threads: int = 1, predictions: Path | None = None,
) -> dict:
    """`model` (the PyTorch model of the stage, or the last one before an ONNX-only stage) gives
    parameter and MAC counts; `size_path` is the stored artifact when it is not the ONNX file.
    With `predictions`, a classifier's test outputs are saved there (`measure.predictions`)."""
    m: dict = {}
    if predictions is not None:
        from edgeslim.measure.predictions import accuracy_and_predictions

        acc = accuracy_and_predictions(onnx_path, task.x_test, task.y_test, task.num_classes, predictions, threads)
    else:
        acc = onnx_accuracy(onnx_path, task.x_test, task.y_test, threads)
    m["accuracy"] = round(acc, 6)
    if model is not None:
        params, nonzero = count_params(model)
        m.update(params=params, nonzero_params=nonzero, macs=count_macs(model, task.input_shape))
    else:
        m.update(_onnx_counts(onnx_path))
    m["size_bytes"] = (size_path or onnx_path).stat().st_size
    m["onnx_size_bytes"] = onnx_path.stat().st_size
    lat = onnx_latency(str(onnx_path), task.x_test[:1].astype(np.float32), runs=latency_runs, threads=threads)
    m.update(lat.as_dict())
    m["latency_threads"] = threads
    for fn in STAGE_EXTRAS:
        m.update(fn(onnx_path, task))
    return m


def _onnx_counts(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    arrays = [numpy_helper.to_array(t) for t in g.initializer]
    params = int(sum(a.size for a in arrays))
    nonzero = int(sum(np.count_nonzero(a) for a in arrays))
    try:  # MACs from the graph itself (shape inference at batch 1); unknown shapes leave them out
        from edgeslim.measure.onnx_counts import count_onnx

        macs: int | None = count_onnx(path).macs or None
    except Exception:  # a graph shape inference cannot follow: report no MAC count rather than a wrong one
        macs = None
    return {"params": params, "nonzero_params": nonzero, "macs": macs}


def _deploy_metrics(onnx_path: Path, task: Task) -> dict:
    """Arena, flash and energy per stage for the default device (`device_fit.stage_deploy_metrics`)."""
    from edgeslim.measure.device_fit import stage_deploy_metrics

    return stage_deploy_metrics(onnx_path, task)


def _compressed_size(onnx_path: Path, task: Task) -> dict:
    """Bytes of the stage's ONNX in the sparse encoding (`size_bytes_compressed`; pruning pays there)."""
    return compressed_size(onnx_path)


def _tflite_metrics(onnx_path: Path, task: Task) -> dict:
    """A `tflite` stage's figures, lifted to the top level of its metrics (results.json)."""
    f = Path(onnx_path).parent / TFLITE_FILE
    summary = f.with_suffix(".json")
    if not f.is_file() or not summary.is_file():
        return {}
    try:
        s = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in tflite_fields(s).items() if k not in ("tflite_input", "tflite_parity")}


StageExtra = Callable[[Path, Task], dict]
STAGE_EXTRAS: tuple[StageExtra, ...] = (_deploy_metrics, _compressed_size, _tflite_metrics)
