"""What a search optimises, measured on a candidate's exported ONNX model for a target device.

Measured here: accuracy (ONNX Runtime, on the split asked for), flash (the deployable ONNX file's
bytes) and the activation arena (the deploy planner's greedy-by-size plan of that file). The device
latency and energy per inference are *estimates* (no device is attached): latency = MACs per
precision / the profile's sustained MAC rate; energy from the deploy area's estimator when it is
installed, otherwise from per-layer operation and byte counts with the profile's per-MAC and
per-byte energies (Horowitz 45 nm scaled) plus active power over the estimated latency. Every energy
carries its method string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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


@dataclass
class OnnxLayer:
    name: str
    op: str
    macs: int
    precision: str  # int8 or fp32: the weights' stored type
    weight_bytes: int
    act_bytes: int  # input + output activation bytes of this layer


def _dims(vi: Any) -> list[int]:
    return [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]


def onnx_layers(path: Path) -> list[OnnxLayer]:
    """Conv/Gemm/MatMul layers of an ONNX model with MACs, weight precision and bytes, batch 1."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = shape_inference.infer_shapes(onnx.load(str(path)))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    shapes = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    producer = {o: n for n in g.node for o in n.output}
    quantized = any(n.op_type == "QuantizeLinear" for n in g.node)
    out = []
    for i, n in enumerate(g.node):
        if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(n.input) < 2:
            continue
        w_name, precision = n.input[1], "fp32"
        src = producer.get(w_name)
        if src is not None and src.op_type == "DequantizeLinear":
            w_name = src.input[0]
            if w_name in inits and inits[w_name].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                precision = "int8"
        if w_name not in inits:
            continue
        w = numpy_helper.to_array(inits[w_name])
        y = shapes.get(n.output[0])
        if y is None:
            continue
        y_elems = int(np.prod(y[1:])) if len(y) > 1 else int(np.prod(y))
        if n.op_type in ("Conv", "ConvTranspose"):
            k = int(np.prod(w.shape[1:]))
        elif n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
            k = int(w.shape[1])
        else:
            k = int(w.shape[0])
        x = shapes.get(n.input[0], [])
        x_elems = int(np.prod(x[1:])) if len(x) > 1 else 0
        act_b = 1 if quantized else 4
        out.append(OnnxLayer(n.name or f"{n.op_type}_{i}", n.op_type, y_elems * k, precision,
                             int(w.size) * (1 if precision == "int8" else 4), (x_elems + y_elems) * act_b))
    return out


def device_latency_ms(layers: list[OnnxLayer], device: Any) -> float:
    """Estimated latency (ms) = sum over layers of MACs / the device's sustained MAC rate (MACs/s)."""
    return sum(1e3 * layer.macs / device.macs_per_second(layer.precision) for layer in layers)


def energy_breakdown(layers: list[OnnxLayer], device: Any) -> list[dict]:
    """Per layer: compute (MACs x pJ/MAC) and memory (weights from their memory, activations from
    theirs, x pJ/byte) energies in mJ. Estimates from the device profile's energy table."""
    rows = []
    for layer in layers:
        compute = layer.macs * device.pj_per_mac(layer.precision) * 1e-9
        memory = (layer.weight_bytes * device.pj_per_byte(device.weights_in)
                  + layer.act_bytes * device.pj_per_byte(device.activations_in)) * 1e-9
        rows.append({"layer": layer.name, "op": layer.op, "precision": layer.precision, "macs": layer.macs,
                     "compute_mj": compute, "memory_mj": memory})
    return rows


def estimate_energy(onnx_path: Path, layers: list[OnnxLayer], device: Any) -> dict:
    """Energy (mJ) and device latency (ms) per inference, their methods, and the per-layer breakdown
    (compute, memory, static mJ). The deploy area's analytic estimator when installed; otherwise the
    same kind of model here: MACs x pJ/MAC + bytes x pJ/byte + active power x (MACs / MAC rate)."""
    try:
        from edgeslim.measure import energy as deploy
    except ImportError:
        deploy = None  # type: ignore[assignment]
    if deploy is not None:
        e = deploy.estimate_energy(onnx_path, device)
        rows = [{"layer": r["name"], "op": r["op"], "precision": r["precision"], "macs": r["macs"],
                 "compute_mj": r["compute_uj"] * 1e-3, "memory_mj": r["memory_uj"] * 1e-3,
                 "static_mj": r.get("static_uj", 0.0) * 1e-3} for r in e.breakdown]
        lat = e.latency_ms if e.latency_ms is not None else device_latency_ms(layers, device)
        return {"energy_mj": e.mj, "energy_method": e.method, "latency_ms": lat,
                "latency_method": f"estimated:analytic@{device.name}", "energy_layers": rows}
    lat = device_latency_ms(layers, device)
    rows = energy_breakdown(layers, device)
    for r in rows:
        r["static_mj"] = device.active_power_mw * 1e-3 * r["macs"] / device.macs_per_second(r["precision"]) * 1e3
    total = sum(r["compute_mj"] + r["memory_mj"] + r["static_mj"] for r in rows)
    return {"energy_mj": total, "energy_method": f"estimated:search-ops+bytes+static@{device.name}",
            "latency_ms": lat, "latency_method": f"estimated:macs/rate@{device.name}", "energy_layers": rows}


def arena_bytes(onnx_path: Path) -> tuple[int, str]:
    """Activation arena (bytes) from the deploy planner, or the largest layer's in+out as a floor."""
    try:
        from edgeslim.measure.arena import plan_arena

        plan = plan_arena(onnx_path, reorder=False)
        return int(plan.arena_bytes), "planned:greedy-by-size"
    except ImportError:
        layers = onnx_layers(onnx_path)
        return max((x.act_bytes for x in layers), default=0), "estimated:max-layer-in+out"


def measure_candidate(onnx_path: Path, task: Task, device: Any, split: Literal["val", "test"],
                      stored_bytes: int | None = None) -> dict:
    """All objective metrics of one exported candidate (see the module docstring for which are estimates).
    `stored_bytes`: the stage's stored artifact when it is not the ONNX file (e.g. packed low-bit weights)."""
    from edgeslim.onnxkit.session import onnx_accuracy

    x, y = (task.x_val, task.y_val) if split == "val" else (task.x_test, task.y_test)
    layers = onnx_layers(onnx_path)
    arena, arena_method = arena_bytes(onnx_path)
    m = {
        "accuracy": round(onnx_accuracy(onnx_path, x, y), 6),
        "accuracy_split": split,
        "flash_bytes": int(stored_bytes) if stored_bytes else onnx_path.stat().st_size,
        "arena_bytes": arena,
        "arena_method": arena_method,
        "macs": int(sum(layer.macs for layer in layers)),
        "macs_int8": int(sum(layer.macs for layer in layers if layer.precision == "int8")),
    }
    m.update(estimate_energy(onnx_path, layers, device))
    return m
