"""Before/after figures of a model-changing step: parameters, MACs (per sample) and ONNX Runtime latency
(ms per run at batch sizes `batches`), the two exported models timed interleaved in one process.

The pruning passes still report these themselves; the measurement core of issue 13 takes this over.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.measure.latency import interleaved_p50_ms
from edgeslim.models.counts import count_macs, count_params


def before_after(before: nn.Module, after: nn.Module, task: Task, batches: tuple[int, ...] = (1,)) -> dict:
    """Parameters, MACs (per sample) and ORT latency (ms, interleaved) before and after a pass."""
    out: dict = {
        "params_before": count_params(before)[0], "params_after": count_params(after)[0],
        "macs_before": count_macs(before, task.input_shape), "macs_after": count_macs(after, task.input_shape),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "before.onnx", Path(tmp) / "after.onnx"]
        export_onnx(before, task.input_shape, paths[0])
        export_onnx(after, task.input_shape, paths[1])
        for b in batches:
            x = task.x_test[np.arange(b) % len(task.x_test)].astype(np.float32)
            lat = interleaved_p50_ms({"before": paths[0], "after": paths[1]}, x, rounds=5,
                                     per_round=20 if b == 1 else 5, warmup=5)
            t_b, t_a = lat["before"], lat["after"]
            out[f"latency_ms_before_b{b}"] = round(t_b, 4)
            out[f"latency_ms_after_b{b}"] = round(t_a, 4)
            out[f"speedup_b{b}"] = round(t_b / t_a, 3)
    return out
