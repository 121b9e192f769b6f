"""All stages of a run timed together: one process, interleaved rounds (`measure.latency.interleaved_latency`,
through the measurement core's `Measurer`).

Each stage's own latency is measured when the stage finishes, minutes apart from the others, so load
from other processes can make a faster model look slower. Timed together at the end, every round runs
each stage in turn (starting with a different one each round), and the speed-ups compare like with like:
these are the figures of the run's table, so its speed-up column agrees with the passes' own comparisons.
Sets, per stage: `latency_ms_p50/p90/p99/mean` (the stage's own figure stays as `latency_ms_*_alone`),
`latency_timing`, `speedup_vs_baseline` (baseline p50 / stage p50), the same under the names
`latency_ms_p50_interleaved`, `latency_ms_p90_interleaved`, `latency_interleaved_rounds`,
`speedup_interleaved`, and for each extra batch size B `latency_b<B>_ms_*` and `speedup_b<B>_vs_baseline`.
Units: ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def time_stages(run_dir: Path, stages: list[dict], task: Any, batches: tuple[int, ...] = (1,),
                measure: Any = None, input_name: str = "input", feed_of: Any = None) -> None:
    """Time every stage's ONNX model on the task's first test samples; adds the fields (module docstring).
    `measure`: the run's `measure.core.Measurer` (threads), default one thread; `input_name`: the models'
    input (an ONNX file given to `run` keeps its own); `feed_of(path, rows) -> feed`: each model's own feed of the
    test rows (stages of a several-input model take packed rows, its original file the named inputs)."""
    from edgeslim.measure.core import Measurer

    paths = {f"{i}:{s['name']}": run_dir / s["onnx"] for i, s in enumerate(stages)
             if s.get("onnx") and (run_dir / s["onnx"]).is_file()}
    if not paths:
        return
    m = measure or Measurer()
    key = {i: f"{i}:{s['name']}" for i, s in enumerate(stages)}
    for b in (1, *[b for b in batches if b != 1]):
        x = task.x_test[np.arange(b) % len(task.x_test)].astype(np.float32)
        feed = {k: feed_of(p, x) for k, p in paths.items()} if feed_of is not None else {input_name: x}
        lat = m.time_together(paths, feed, rounds=10, per_round=20 if b == 1 else 5, warmup=10)
        base = lat.get(key[0])
        for i, s in enumerate(stages):
            got = lat.get(key[i])
            if got is None:
                continue
            speedup = round(base.p50_ms / got.p50_ms, 3) if base is not None and got.p50_ms > 0 else None
            if b == 1:
                for q in ("p50", "p90", "p99", "mean"):
                    s.setdefault(f"latency_ms_{q}_alone", s.get(f"latency_ms_{q}"))
                s.update(got.as_dict())
                s["latency_timing"] = f"interleaved: {len(paths)} stages in one loop at the end of the run"
                s.update(latency_ms_p50_interleaved=round(got.p50_ms, 5), latency_ms_p90_interleaved=round(got.p90_ms, 5),
                         latency_interleaved_rounds=got.runs, speedup_vs_baseline=speedup, speedup_interleaved=speedup)
            else:
                s.update(got.as_dict(f"latency_b{b}_ms_"))
                s[f"speedup_b{b}_vs_baseline"] = speedup
