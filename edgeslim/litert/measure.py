"""`edgeslim measure X.tflite`: accuracy and latency in the LiteRT interpreter, size, and the TFLite
Micro arena recorded by running the model in TFLite Micro. When an ONNX file of the same name sits
beside it (as `edgeslim export` and the `tflite` stage leave them), the static planner's arena for that
ONNX model is shown beside the TFLite Micro figure, so the estimate can be compared with the runtime.
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.graph import has_qdq
from edgeslim.onnxkit.load import read_onnx


def measure_tflite(path: str | Path, task=None, runs: int = 200, threads: int = 1) -> dict:
    """One row of `edgeslim measure` for a `.tflite` (task optional: accuracy is None without it)."""
    from edgeslim.litert import available
    from edgeslim.litert.interpreter import LiteRTModel

    p = Path(path)
    lm = LiteRTModel(p, threads=threads)
    m: dict = {"name": str(p), "runtime": "litert", "precision": "int8" if lm.input.quantized else lm.input.dtype}
    if task is not None:
        if tuple(task.input_shape) != lm.sample_shape:
            raise EdgeslimError(f"{p}: model expects samples of shape {lm.sample_shape} but task '{task.name}' has "
                                f"{tuple(task.input_shape)}")
        m["accuracy"] = round(lm.accuracy(task.x_test, task.y_test), 6)
        sample = task.x_test[:1]
    else:
        import numpy as np

        m["accuracy"] = None
        sample = np.random.default_rng(0).random((1, *lm.sample_shape), dtype=np.float32)
    m.update(params=None, nonzero_params=None, macs=None, size_bytes=p.stat().st_size)
    m.update(lm.latency(sample, runs=runs, threads=threads).as_dict())
    m["latency_threads"] = threads
    m["input"], m["output"] = lm.input.as_dict(), lm.output.as_dict()
    if available("micro"):
        from edgeslim.litert.fit import tflite_footprint

        fp = tflite_footprint(p)
        m.update({k: fp[k] for k in ("tflm_arena_bytes", "tflm_arena_head_bytes", "tflm_arena_tail_bytes", "ops")})
        m["tflm_arena_method"] = fp["arena_method"]
    onnx = p.with_suffix(".onnx")
    if onnx.is_file() and has_qdq(read_onnx(onnx)) == lm.input.quantized:  # compare like with like
        from edgeslim.deploy.memory import plan_arena

        m["arena_bytes"] = m["planner_arena_bytes"] = plan_arena(onnx, reorder=False).arena_bytes
        m["planner_onnx"] = str(onnx)
    return m


__all__ = ["measure_tflite"]
