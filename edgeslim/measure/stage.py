"""Measure one pipeline stage with the measurement core: accuracy in ONNX Runtime, counts, size on disk,
latency, arena, flash, fit and energy for the run's device, plus the extras other modules register in
`STAGE_METRICS` (`fn(onnx_path, task, metrics_so_far) -> dict`, labelling their estimates).

Measurement never changes a model. The latency here is the stage timed alone, when it is written (what a
resumed run has); the run's final table times all stages together, interleaved (`pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgeslim.data import Task
from edgeslim.measure.core import measure_model

StageMetric = Callable[[Path, Task, dict], dict]
STAGE_METRICS: list[StageMetric] = []
DEVICE_FIELDS = ("arena_bytes", "arena_bytes_reordered", "naive_activation_bytes", "arena_lower_bound",
                 "arena_note", "deploy_device", "weights_bytes", "flash_bytes", "flash_available", "ram_bytes",
                 "ram_available", "arena_source", "fits_flash", "fits_ram", "fits", "fit_reasons", "energy_mj",
                 "energy_method", "energy_latency_ms", "energy_note", "macs_by_precision")


def measure_stage(
    onnx_path: Path, task: Task, model: nn.Module | None, size_path: Path | None = None,
    latency_runs: int = 200, threads: int = 1, device: str | None = None,
) -> dict:
    """`model` (the PyTorch model of the stage, or the last one before an ONNX-only stage) gives
    parameter and MAC counts; `size_path` is the stored artifact when it is not the ONNX file."""
    m = measure_model(onnx_path, task=task, device=device, torch_model=model, size_path=size_path,
                      threads=threads, runs=latency_runs).as_dict()
    for k in ("name", "runtime", "inputs", "warnings", "latency_runs"):
        m.pop(k, None)
    m["input_source"] = "task"
    for fn in STAGE_METRICS:
        m.update(fn(onnx_path, task, m))
    return m


def device_metrics(onnx_path: Path, task: Task, device: str | None) -> dict:
    """Only the device figures of a stage (arena, flash, fit, energy): what changes with the device."""
    d = measure_model(onnx_path, task=None, device=device, latency=False).as_dict()
    return {k: d[k] for k in DEVICE_FIELDS if k in d}
