"""Measure one pipeline stage: accuracy in ONNX Runtime, counts, size on disk, latency.

Measurement never changes a model. Other modules add fields through `STAGE_METRICS` (e.g. arena size,
energy); each extra is `fn(onnx_path, task, metrics_so_far) -> dict` and must label estimates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from edgeslim.data import Task
from edgeslim.measure.latency import onnx_latency
from edgeslim.measure.macs import count_macs, count_params
from edgeslim.onnxkit.session import onnx_accuracy

StageMetric = Callable[[Path, Task, dict], dict]
STAGE_METRICS: list[StageMetric] = []


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
    for fn in STAGE_METRICS:
        m.update(fn(onnx_path, task, m))
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


def _deploy_metrics(onnx_path: Path, task: Task, m: dict) -> dict:
    """Arena, flash and energy per stage for the default device (edgeslim.deploy.fit.stage_metrics)."""
    from edgeslim.deploy.fit import stage_metrics

    return stage_metrics(onnx_path, task, m)


STAGE_METRICS.append(_deploy_metrics)
