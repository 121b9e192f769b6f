"""Footprint of a `.tflite`: its bytes and the TFLite Micro arena (recorded, head + tail). The fit verdict on a
device (flash = model bytes + runtime code; RAM = this arena + the runtime's RAM) is the measurement
core's one verdict (`edgeslim.measure.device_fit.device_fit`, through `measure_model`).
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.litert.micro import tflm_arena


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


__all__ = ["tflite_footprint"]
