"""All stages of a run timed together: one process, interleaved rounds (`measure.latency.interleaved_latency`).

Each stage's own latency is measured when the stage finishes, minutes apart from the others, so load
from other processes can make a faster model look slower. Timed together at the end, every round runs
each stage once (starting with a different one each round), and the speed-ups compare like with like.
Adds `latency_ms_p50_interleaved`, `latency_ms_p90_interleaved` and `speedup_interleaved` (baseline p50
/ stage p50) to each stage. Units: ms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.measure.latency import interleaved_latency
from edgeslim.onnxkit.session import session


def time_stages(run_dir: Path, stages: list[dict], sample: np.ndarray, seconds: float = 3.0,
                threads: int = 1) -> None:
    """Time every stage's ONNX model on `sample` (batch 1) for about `seconds` in total; adds the fields."""
    sess, feeds = {}, {}
    for i, s in enumerate(stages):
        p = run_dir / s["onnx"] if s.get("onnx") else None
        if p is None or not p.is_file():
            continue
        key = f"{i}:{s['name']}"
        sess[key] = session(p, threads=threads)
        feeds[key] = {sess[key].get_inputs()[0].name: sample.astype(np.float32)}
    if len(sess) < 2:
        return
    lat = interleaved_latency(sess, feeds, seconds=seconds, threads=threads)
    base = lat.get(f"0:{stages[0]['name']}")
    for i, s in enumerate(stages):
        got = lat.get(f"{i}:{s['name']}")
        if got is None:
            continue
        s["latency_ms_p50_interleaved"] = round(got.p50_ms, 5)
        s["latency_ms_p90_interleaved"] = round(got.p90_ms, 5)
        s["latency_interleaved_rounds"] = got.runs
        if base is not None and got.p50_ms > 0:
            s["speedup_interleaved"] = round(base.p50_ms / got.p50_ms, 4)
