"""What a search optimises, measured on a candidate's exported ONNX model for a target device.

Measured here: accuracy (ONNX Runtime, on the split asked for), flash (the deployable ONNX file's
bytes) and the activation arena (the measurement core's greedy-by-size plan of that file). The device
latency and energy per inference are *estimates* (no device is attached), both from the one analytic
estimator (`edgeslim.measure.energy`): per-layer operation and byte counts with the profile's per-MAC and
per-byte energies plus active power over the estimated time. Every energy carries its method string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeslim.data import Task


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Literal["maximize", "minimize"]
    key: str  # field of the candidate metrics
    unit: str
    about: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("accuracy", "maximize", "accuracy", "%", "top-1 accuracy (ONNX Runtime)"),
        Objective("energy", "minimize", "energy_mj", "mJ", "energy per inference on the device (estimated)"),
        Objective("latency", "minimize", "latency_ms", "ms", "latency per inference on the device (estimated)"),
        Objective("flash", "minimize", "flash_bytes", "B", "deployable model file (measured bytes)"),
        Objective("arena", "minimize", "arena_bytes", "B", "activation arena (planned bytes)"),
    )
}


def objective_value(obj: Objective, metrics: dict) -> float:
    v = float(metrics[obj.key])
    return 100 * v if obj.name == "accuracy" else v


def mac_layers(onnx_path: Path) -> list[Any]:  # -> list[edgeslim.measure.onnx_counts.LayerCount]
    """The Conv/Gemm/MatMul layers of an ONNX model at batch 1, in graph order, with MACs and precision."""
    from edgeslim.measure.onnx_counts import MAC_OPS, count_onnx

    return [x for x in count_onnx(onnx_path).layers if x.op in MAC_OPS]


def arena_bytes(onnx_path: Path) -> tuple[int, str]:
    """Activation arena (bytes) of the measurement core's planner (greedy-by-size, the file's order)."""
    from edgeslim.measure.fields import arena_fields
    from edgeslim.onnxkit.load import read_onnx

    a = arena_fields(read_onnx(onnx_path), onnx_path, {}, reorder=False)
    if a.get("arena_bytes") is None:
        return 0, "unavailable: " + a.get("arena_note", "")
    return int(a["arena_bytes"]), "planned:greedy-by-size" + (" (lower bound)" if a.get("arena_lower_bound") else "")


def measure_candidate(onnx_path: Path, task: Task, device: Any, split: Literal["val", "test"],
                      stored_bytes: int | None = None) -> dict:
    """All objective metrics of one exported candidate (see the module docstring for which are estimates).
    `stored_bytes`: the stage's stored artifact when it is not the ONNX file (e.g. packed low-bit weights)."""
    from edgeslim.measure.energy import estimate_energy
    from edgeslim.onnxkit.session import onnx_accuracy

    x, y = (task.x_val, task.y_val) if split == "val" else (task.x_test, task.y_test)
    arena, arena_method = arena_bytes(onnx_path)
    e = estimate_energy(onnx_path, device)
    layers = [r for r in e.breakdown if r["macs"]]
    return {
        "accuracy": round(onnx_accuracy(onnx_path, x, y), 6),
        "accuracy_split": split,
        "flash_bytes": int(stored_bytes) if stored_bytes else onnx_path.stat().st_size,
        "arena_bytes": arena,
        "arena_method": arena_method,
        "macs": int(sum(r["macs"] for r in layers)),
        "macs_int8": int(sum(r["macs"] for r in layers if r["precision"] == "int8")),
        "energy_mj": e.mj, "energy_method": e.method,
        "latency_ms": e.latency_ms, "latency_method": e.method,
        "energy_layers": [{"layer": r["name"], "op": r["op"], "precision": r["precision"], "macs": r["macs"],
                           "compute_mj": r["compute_uj"] * 1e-3, "memory_mj": r["memory_uj"] * 1e-3,
                           "static_mj": r.get("static_uj", 0.0) * 1e-3} for r in e.breakdown],
    }
