"""The `quantize_int8` pass's per-layer path: the INT8 plan on a task model, then a pick by measurement.

Three models compete against the stage's FP32 input, timed interleaved at batch 1 (the pipeline's
latency setting) and judged by `measure.compare.choose` (the same rule as `edgeslim optimize`):
  int8-mixed  the plan: INT8 where it is faithful and faster here, float (int8 weights on disk) elsewhere
  int8-full   every layer INT8 in the plan's integer format (what the pass did before)
  w8          FP32 compute with int8 weight storage (the plan with every layer float)
A candidate must stay within `max_drop` points of the FP32 validation accuracy. If none qualifies
under the rule (all slower than FP32), the fastest faithful one is written and the stage says, in its
notes, that it is slower than FP32: thin layers (a pruned ResNet-8 on 8x8 digits) often run slower in
INT8 than in FP32 on x86, and a compression step must not undo the previous one's speed silently.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeslim.measure.compare import Option, choose, ratio
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import name_nodes, save
from edgeslim.onnxkit.session import onnx_accuracy, session
from edgeslim.quant import int8_plan
from edgeslim.quant.qdq_float import keep_float


@dataclass
class StageResult:
    path: Path                  # the written model (inside the stage folder)
    chosen: str
    why: str
    rows: list[dict]            # every candidate: accuracy, size, latency, ratio to FP32, why
    plan: int8_plan.Int8Plan
    slower_than_fp32: str | None  # set when the written model is slower than the FP32 input


def per_layer_int8(
    pre: Path, work: Path, feeds: list[dict], x_val: np.ndarray, y_val: np.ndarray, x_time: np.ndarray,
    opts: int8_plan.Int8Options, max_drop: float, prefer: str = "balanced", seconds: float = 4.0,
    timer: int8_plan.Timer | None = None,
) -> StageResult:
    """Plan, build the three candidates in `work`, measure, choose. `pre` is the FP32 model (ORT
    pre-processed), `feeds` the calibration batches, `x_time` the batch-1 timing input."""
    model = onnx.load(str(pre))
    name_nodes(model)
    name = model.graph.input[0].name
    fp = session(pre)
    ref = [fp.run(None, f) for f in feeds]
    tfeed = {name: x_time.astype(np.float32)}
    timer = timer or int8_plan.default_timer(tfeed, seconds=seconds, threads=opts.threads)
    plan = int8_plan.build(model, feeds, ref, opts, timer=timer, timing_feed=tfeed)
    assert plan.full is not None
    every = set(plan.units.quant)
    w8 = keep_float(plan.full, plan.units.nodes(every), min_elements=16, float_model=plan.float_model)
    models = {"int8-mixed": plan.model, "int8-full": plan.full, "w8": w8}
    paths = {}
    for k, m in models.items():
        raw = work / f"{k}.raw.onnx"
        save(m, raw)
        paths[k] = work / f"{k}.onnx"
        oq.compact_onnx(raw, paths[k])  # short tensor names: on a small model the names are a large share
    times = timer({"fp32": pre.read_bytes(), **{k: p.read_bytes() for k, p in paths.items()}})
    fp32_acc = onnx_accuracy(pre, x_val, y_val)
    opts_ = []
    rows = []
    for k, p in paths.items():
        acc = onnx_accuracy(p, x_val, y_val)
        ok = (fp32_acc - acc) * 100 <= max_drop + 1e-9
        opts_.append(Option(k, p.stat().st_size, ok, times[k]))
        r = ratio(times[k], times["fp32"])
        rows.append({"candidate": k, "val_accuracy": round(acc, 6), "size_bytes": p.stat().st_size,
                     "latency_ms_p50": round(float(np.median(times[k])) * 1e3, 4),
                     "fp32_latency_ms_p50": round(float(np.median(times["fp32"])) * 1e3, 4),
                     "speedup_vs_fp32": round(r.speedup, 3), "speedup_ci": [round(1 / r.hi, 3), round(1 / r.lo, 3)]})
    fp_size = pre.stat().st_size
    best = choose(opts_, times["fp32"], fp_size, prefer=prefer)  # type: ignore[arg-type]
    slower = None
    if best is None:  # nothing qualifies: the fastest faithful one, said loudly
        faithful = [o for o in opts_ if o.faithful] or opts_
        best = min(faithful, key=lambda o: ratio(o.times, times["fp32"]).median)
        r = ratio(best.times, times["fp32"])
        slower = (f"{best.name} is {r.speedup:.2f}x FP32 speed (slower; 95% CI {1 / r.hi:.2f}-{1 / r.lo:.2f}x): "
                  "no candidate was both faithful and at least as fast")
        best.why = "written although slower: " + slower
    for row, o in zip(rows, opts_):
        row["why"] = o.why
    dst = work.parent / "model.onnx"
    shutil.copyfile(paths[best.name], dst)
    return StageResult(dst, best.name, best.why, rows, plan, slower)
