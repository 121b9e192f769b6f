"""`edgeslim measure X.tflite`: accuracy and latency in the LiteRT interpreter, size, and the TFLite
Micro arena recorded by running the model in TFLite Micro. When an ONNX file of the same name sits
beside it (as `edgeslim export` and the `tflite` stage leave them), the static planner's arena for that
ONNX model is shown beside the TFLite Micro figure, so the estimate can be compared with the runtime
(`arena_beside`, also shown by `edgeslim fit`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.litert.micro import tflm_arena
from edgeslim.measure.arena import plan_arena
from edgeslim.measure.latency import Latency, percentiles
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
        m["accuracy"] = None
        sample = np.random.default_rng(0).random((1, *lm.sample_shape), dtype=np.float32)
    m.update(params=None, nonzero_params=None, macs=None, size_bytes=p.stat().st_size)
    m.update(litert_latency(lm, sample, runs=runs, threads=threads).as_dict())
    m["latency_threads"] = threads
    m["input"], m["output"] = lm.input.as_dict(), lm.output.as_dict()
    if available("micro"):
        from edgeslim.litert.footprint import tflite_footprint

        fp = tflite_footprint(p)
        m.update({k: fp[k] for k in ("tflm_arena_bytes", "tflm_arena_head_bytes", "tflm_arena_tail_bytes", "ops")})
        m["tflm_arena_method"] = fp["arena_method"]
    onnx = p.with_suffix(".onnx")
    if onnx.is_file() and has_qdq(read_onnx(onnx)) == lm.input.quantized:  # compare like with like
        m["arena_bytes"] = m["planner_arena_bytes"] = plan_arena(onnx, reorder=False).arena_bytes
        m["planner_onnx"] = str(onnx)
    return m


def litert_latency(lm, sample: np.ndarray, runs: int = 200, warmup: int = 20, max_seconds: float = 5.0,
                   threads: int = 1) -> Latency:
    """Time single inferences of a `LiteRTModel` (quantization of the input excluded, as on a device)."""
    q = lm.input.quantize(np.asarray(sample, np.float32)[:1])
    for _ in range(warmup):
        lm.invoke_raw(q)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        lm.run_once(q)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 20:
            break
    return percentiles(times, 1, threads)


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
    from edgeslim.litert.interpreter import LiteRTModel

    if LiteRTModel(tfl).input.quantized != has_qdq(read_onnx(onnx)):
        return None
    planner = plan_arena(onnx, reorder=False).arena_bytes
    a = tflm_arena(tfl)
    return {"onnx": str(onnx), "tflite": str(tfl), "planner_arena_bytes": planner,
            "tflm_arena_bytes": a.total_bytes, "tflm_arena_head_bytes": a.head_bytes,
            "tflm_arena_tail_bytes": a.tail_bytes,
            "planner_vs_tflm_head_pct": round(100.0 * (planner - a.head_bytes) / max(a.head_bytes, 1), 2)}




__all__ = ["measure_tflite", "litert_latency", "arena_beside"]
