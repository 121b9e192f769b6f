"""Measure one pipeline stage with the measurement core (`measure.core.measure_model`): accuracy in ONNX
Runtime, counts, size on disk, latency, arena, flash, fit and energy for the run's device, and the extras in
`STAGE_EXTRAS` (compressed size, a .tflite beside the ONNX).

Measurement never changes a model. Each extra is `fn(onnx_path, task) -> dict` and labels its estimates;
the list is fixed here, so one file says what a stage's metrics hold. The latency here is the stage timed
alone when it is written (what a resumed run keeps as `latency_ms_*_alone`); the run's final table times all
stages together, interleaved, in one loop (`run.together.time_stages`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeslim.data import Task
from edgeslim.formats.sparse import compressed_size
from edgeslim.litert.export import TFLITE_FILE, tflite_fields
from edgeslim.measure.core import measure_model

# The fields that depend on the device: a resumed run on another device re-measures these (only).
DEVICE_FIELDS = ("arena_bytes", "arena_bytes_reordered", "naive_activation_bytes", "arena_lower_bound",
                 "arena_note", "deploy_device", "weights_bytes", "flash_bytes", "flash_available", "ram_bytes",
                 "ram_available", "arena_source", "fits_flash", "fits_ram", "fits", "fit_reasons", "energy_mj",
                 "energy_method", "energy_latency_ms", "energy_note", "macs_by_precision")


def measure_stage(
    onnx_path: Path, task: Task, model: nn.Module | None, size_path: Path | None = None,
    latency_runs: int = 200, threads: int = 1, device: str | None = None, predictions: Path | None = None,
) -> dict:
    """`model` (the PyTorch model of the stage, or the last one before an ONNX-only stage) gives
    parameter and MAC counts; `size_path` is the stored artifact when it is not the ONNX file.
    With `predictions`, a classifier's test outputs are saved there (`measure.predictions`)."""
    m = measure_model(onnx_path, task=task, device=device, torch_model=model, size_path=size_path,
                      threads=threads, runs=latency_runs, predictions=predictions).as_dict()
    for k in ("name", "runtime", "inputs", "warnings", "latency_runs"):
        m.pop(k, None)
    for fn in STAGE_EXTRAS:
        m.update(fn(onnx_path, task))
    return m


def device_metrics(onnx_path: Path, task: Task, device: str | None) -> dict:
    """Only the device figures of a stage (arena, flash, fit, energy): what changes with the device."""
    d = measure_model(onnx_path, task=None, device=device, latency=False).as_dict()
    return {k: d[k] for k in DEVICE_FIELDS if k in d}


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
STAGE_EXTRAS: tuple[StageExtra, ...] = (_compressed_size, _tflite_metrics)
