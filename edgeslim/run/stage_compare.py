"""The end of a run: what every stage is compared on, added to its results.json entry.

- all stages timed together, interleaved (`run.together`);
- the device verdict with estimated energy and battery life (`run.device_verdict`);
- the per-layer structure against the baseline (`report.layers`);
- what changed in behaviour against the baseline (`report.behaviour`).
Fields are only added, never removed (results.json is a contract).
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.data import Task
from edgeslim.report import behaviour, layers
from edgeslim.run.device_verdict import add_device_verdicts
from edgeslim.run.together import time_stages


def compare_stages(run_dir: Path, stages: list[dict], task: Task) -> None:
    """Annotate `stages` in place (see the module docstring); the stages are timed together first unless the
    pipeline already did (`latency_timing`)."""
    if not any("latency_timing" in s for s in stages):
        time_stages(run_dir, stages, task)
    add_device_verdicts(run_dir, stages)
    base: list[dict] | None = None
    for s in stages:
        p = run_dir / s["onnx"] if s.get("onnx") else None
        if p is None or not p.is_file():
            continue
        rows = layers.onnx_layers(p)
        base = rows if base is None else base
        s["layers"] = layers.with_baseline(rows, base)
    behaviour.add_behaviour(run_dir, stages, task.x_test)
