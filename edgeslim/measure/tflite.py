"""The measurement core for a `.tflite` file (LiteRT extra): latency in the LiteRT interpreter (through the
one timer), size, accuracy with a task, the TFLite Micro arena recorded by running the model in TFLite Micro,
and the fit verdict on it. When an ONNX file of the same name and precision sits beside it (as `edgeslim
export` and the `tflite` stage leave them), the static planner's arena of that ONNX model is shown beside
the TFLite Micro figure, and the energy estimate comes from that ONNX graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.devices import DEFAULT_DEVICE, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.measure.device_fit import device_fit
from edgeslim.measure.latency import interleaved_latency
from edgeslim.measure.source import Source
from edgeslim.onnxkit.inputs import single_input_samples


def _sample(lm: Any, inputs: str | Path | None, task: Any, seed: int) -> tuple[np.ndarray, str]:
    if inputs is not None:
        return single_input_samples(inputs, tuple(lm.sample_shape), "a .tflite model")[:1], "inputs"
    if task is not None:
        return task.x_test[:1].astype(np.float32), "task"
    return np.random.default_rng(seed).random((1, *lm.sample_shape), dtype=np.float32), "declared"


def measure_tflite(src: Source, inputs: str | Path | None = None, *, task: Any = None,
                   device: Any = None, threads: int = 1, runs: int = 200, max_seconds: float = 5.0,
                   deploy: bool = True, seed: int = 0) -> Any:  # -> Measurement
    from edgeslim.litert import litert_available
    from edgeslim.litert.interpreter import LiteRTModel
    from edgeslim.measure.core import Measurement
    from edgeslim.measure.fields import arena_fields, energy_fields
    from edgeslim.onnxkit.graph import has_qdq
    from edgeslim.onnxkit.load import read_onnx

    p = src.path
    m = Measurement(name=str(p), runtime="litert")
    m.size_bytes = p.stat().st_size
    quantized = None
    if runs or task is not None or inputs is not None:  # the interpreter (fit alone needs only the footprint)
        lm = LiteRTModel(p, threads=threads)
        quantized = lm.input.quantized
        if task is not None and tuple(task.input_shape) != lm.sample_shape:
            raise EdgeslimError(f"{p}: model expects samples of shape {lm.sample_shape} but task '{task.name}' "
                                f"has {tuple(task.input_shape)}")
        x, m.input_source = _sample(lm, inputs, task, seed)
        m.inputs = {lm.input.name: f"{lm.input.dtype}{list(lm.input.shape)}"}
        if task is not None:
            m.accuracy, m.accuracy_samples = round(lm.accuracy(task.x_test, task.y_test), 6), len(task.y_test)
        q = lm.input.quantize(x)  # quantization of the input excluded from the timing, as on a device
        m.runner = lambda: lm.invoke_raw(q)
        if runs:
            m.latency = interleaved_latency({"litert": m.runner}, rounds=runs,
                                            max_seconds=max_seconds, warmup=10, threads=threads, batch=1)["litert"]
        m.extra.update(precision="int8" if quantized else lm.input.dtype, input=lm.input.as_dict(),
                       output=lm.output.as_dict())
    tflm = None
    if litert_available("micro"):
        from edgeslim.litert.footprint import tflite_footprint

        fp = tflite_footprint(p)
        tflm = fp["tflm_arena_bytes"]
        m.extra.update({k: fp[k] for k in ("tflm_arena_bytes", "tflm_arena_head_bytes", "tflm_arena_tail_bytes",
                                           "ops") if k in fp})
        m.extra["tflm_arena_method"] = fp.get("arena_method", "recorded:tflite-micro")
    onnx = p.with_suffix(".onnx")
    beside = onnx.is_file() and quantized is not None and has_qdq(read_onnx(onnx)) == quantized  # like with like
    if deploy:
        dev = load_device(device or DEFAULT_DEVICE)
        if beside:
            proto = read_onnx(onnx)
            shapes = {i.name: [1, *lm.sample_shape] for i in proto.graph.input[:1]}  # lm: loaded when `beside`
            planner = arena_fields(proto, onnx, shapes)
            m.arena = {**planner, "planner_onnx": str(onnx), "planner_arena_bytes": planner.get("arena_bytes")}
            m.energy = energy_fields(proto, dev, None, shapes, threads)
        m.energy = tflite_energy(p, dev) or m.energy  # the file's own operators, at their stored precision
        if tflm is not None:  # RAM: the arena TFLite Micro recorded; flash: the whole .tflite file
            m.arena["arena_bytes"] = tflm
            m.fit = device_fit(dev, m.size_bytes, tflm, "recorded:tflite-micro")
        elif m.arena.get("arena_bytes") is not None:
            m.fit = device_fit(dev, m.size_bytes, m.arena["arena_bytes"], "planner")
        if m.fit is not None and m.energy.get("energy_mj") is not None:
            m.fit.energy_mj, m.fit.energy_method = m.energy["energy_mj"], m.energy["energy_method"]
            m.fit.latency_ms = m.energy.get("energy_latency_ms")
        else:
            m.warnings.append("no arena: install the TFLite Micro part of the LiteRT extra or keep the ONNX "
                              "model beside the .tflite file")
    return m


def tflite_energy(path: Path, dev: Any) -> dict:
    """Energy per inference (mJ) and latency (ms) on `dev`, *estimated* by the analytic model over the
    .tflite file's own operators (`measure.tflite_counts`); {} when the file cannot be counted."""
    from edgeslim.measure.energy import estimate_from_counts
    from edgeslim.measure.tflite_counts import count_tflite

    try:
        e = estimate_from_counts(count_tflite(path), dev)
    except (EdgeslimError, ImportError):
        return {}
    return {"energy_mj": round(e.mj, 6), "energy_method": e.method + " (.tflite operators)",
            "energy_latency_ms": None if e.latency_ms is None else round(e.latency_ms, 4),
            "macs_by_precision": e.macs_by_precision}


def arena_beside(model: str | Path) -> dict | None:
    """Planner and TFLite Micro arenas side by side, for a model that exists as `X.onnx` and `X.tflite`
    of the same precision (as `edgeslim export` leaves them). None when there is no such pair."""
    from edgeslim.litert import litert_available

    p = Path(model)
    if p.suffix not in (".onnx", ".tflite") or not litert_available("run", "micro"):
        return None
    onnx, tfl = p.with_suffix(".onnx"), p.with_suffix(".tflite")
    if not (onnx.is_file() and tfl.is_file()):
        return None
    from edgeslim.litert.interpreter import LiteRTModel
    from edgeslim.litert.micro import tflm_arena
    from edgeslim.measure.arena import plan_activation_arena
    from edgeslim.onnxkit.graph import has_qdq
    from edgeslim.onnxkit.load import read_onnx

    if LiteRTModel(tfl).input.quantized != has_qdq(read_onnx(onnx)):
        return None
    planner = plan_activation_arena(onnx, reorder=False).arena_bytes
    a = tflm_arena(tfl)
    return {"onnx": str(onnx), "tflite": str(tfl), "planner_arena_bytes": planner,
            "tflm_arena_bytes": a.total_bytes, "tflm_arena_head_bytes": a.head_bytes,
            "tflm_arena_tail_bytes": a.tail_bytes,
            "planner_vs_tflm_head_pct": round(100.0 * (planner - a.head_bytes) / max(a.head_bytes, 1), 2)}


__all__ = ["measure_tflite", "arena_beside", "tflite_energy"]
