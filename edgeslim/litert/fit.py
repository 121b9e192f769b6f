"""Footprint of a `.tflite`: its bytes and the TFLite Micro arena (recorded, head + tail). The fit verdict on a
device (flash = model bytes + runtime code; RAM = this arena + the runtime's RAM) is the measurement
core's one verdict (`edgeslim.measure.footprint.verdict`, through `measure_model`).
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.litert.micro import tflm_arena
from edgeslim.onnxkit.graph import has_qdq
from edgeslim.onnxkit.load import read_onnx


def tflite_footprint(path: str | Path) -> dict:
    """Model bytes, the TFLite Micro arena (total, head, tail) and the operators of a `.tflite`."""
    from edgeslim.litert.carray import op_names

    p = Path(path)
    data = p.read_bytes()
    arena = tflm_arena(data)
    return {
        "model": str(p), "model_bytes": len(data), "tflm_arena_bytes": arena.total_bytes,
        "tflm_arena_head_bytes": arena.head_bytes, "tflm_arena_tail_bytes": arena.tail_bytes,
        "ops": op_names(data), "arena_method": "recorded:tflite-micro",
    }


def arena_beside(model: str | Path) -> dict | None:
    """Planner and TFLite Micro arenas side by side, for a model that exists as `X.onnx` and `X.tflite`
    of the same precision (as `edgeslim export` leaves them). None when there is no such pair."""
    from edgeslim.litert import available

    p = Path(model)
    if p.suffix not in (".onnx", ".tflite") or not available("run", "micro"):
        return None
    onnx, tfl = p.with_suffix(".onnx"), p.with_suffix(".tflite")
    if not (onnx.is_file() and tfl.is_file()):
        return None
    from edgeslim.deploy.memory import plan_arena
    from edgeslim.litert.interpreter import LiteRTModel
    if LiteRTModel(tfl).input.quantized != has_qdq(read_onnx(onnx)):
        return None
    planner = plan_arena(onnx, reorder=False).arena_bytes
    a = tflm_arena(tfl)
    return {"onnx": str(onnx), "tflite": str(tfl), "planner_arena_bytes": planner,
            "tflm_arena_bytes": a.total_bytes, "tflm_arena_head_bytes": a.head_bytes,
            "tflm_arena_tail_bytes": a.tail_bytes,
            "planner_vs_tflm_head_pct": round(100.0 * (planner - a.head_bytes) / max(a.head_bytes, 1), 2)}


__all__ = ["tflite_footprint", "arena_beside"]
