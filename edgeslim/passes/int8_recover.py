"""Quant-aware recovery for `quantize_int8` (`recover:`): when the INT8 plan keeps layers float only because INT8
costs them fidelity, retrain a copy of the stage's PyTorch model with fake quantization (int8 weights per output
channel, uint8 inputs per tensor: the plan's u8s8-pc grid) by function matching from the run's original model
(`distill.matching`: augmented views, the teacher's outputs live, the best validation step of the fake-quantized
copy kept), export it with its weights on the int8 grid, run the INT8 plan again on it, and keep whichever of
the two written models runs faster, interleaved, when the retrained one is also faithful. Skipped (said in the
notes) when no layer is float for fidelity, or when full INT8 ran no faster than FP32 in the first plan's timing
(a small recurrent model: fewer float layers would not pay for the retraining).

The retrained copy is held to the same bar as the first plan: its plan measures fidelity against the stage's own
FP32 input (`Pick.reference`), not against its own float weights, on validation rows (`Pick.judge_feeds`: the
copy was fitted on the training rows the first plan calibrates and judges on), and its candidates must stay within
`max_accuracy_drop` of that input's validation score. Every pick is on the validation split; the stage's test
fidelity is measured afterwards by the run as for any stage. Only a model that is an `nn.Module` (any run kind
with a PyTorch model: zoo, `.pt2`, converted ONNX) and a handler that can export it take this path; otherwise the
notes say why it was skipped.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from edgeslim.data import Task
from edgeslim.measure.decide import ratio
from edgeslim.onnxkit import quant as oq
from edgeslim.passes.base import RunContext
from edgeslim.quant import fakequant as fq
from edgeslim.quant import int8_plan

if TYPE_CHECKING:
    from edgeslim.passes.quantize_int8 import QuantizeInt8, StageResult

MIN_FULL_SPEEDUP = 1.0  # full INT8 at or under this speed-up over FP32 (first plan's timing): not worth retraining


def fidelity_floats(r: StageResult) -> list[str]:
    """The layers the plan kept float for fidelity (not for speed) in the chosen model."""
    from edgeslim.passes.quantize_int8 import base_candidate

    if base_candidate(r.chosen) == "int8-full":
        return []
    return [u for u, why in r.plan.float_units.items() if why.startswith("fidelity")]


def quant_aware_copy(model: nn.Module, task: Task, cfg: QuantizeInt8, ctx: RunContext) -> tuple[nn.Module, dict]:
    """A copy of `model` retrained with int8 fake quantization by function matching from the run's original;
    returned with its weights on the int8 grid (`fakequant.unwrap`) and the matching's record."""
    from edgeslim.distill.matching import match
    from edgeslim.quant.qat import prepare_qat

    assert cfg.recover is not None
    calib = task.calibration(cfg.calibration_samples, ctx.seed)
    qm, _, pairs = prepare_qat(model, calib, weight_bits=8, activation_bits=8, per_channel=True, lsq=False,
                               fold_bn=True)
    rec = match(qm, ctx.teacher().eval(), task, cfg.recover, desc="quantize_int8: recover", quiet=ctx.quiet)
    notes = {k: v for k, v in rec.items() if k not in ("history", "feature_layers")}
    notes["bn_folded"] = len(pairs)
    notes["fake_quantized_layers"] = len(fq.wrappers(qm))
    return fq.unwrap(qm).eval(), notes


def recover_plan(model: nn.Module | None, task: Task, cfg: QuantizeInt8, ctx: RunContext, r0: StageResult,
            pre: Path, opts: int8_plan.Int8Options, clock: int8_plan.Clock) -> tuple[StageResult, Path, dict]:
    """(the result kept, its candidates folder, the notes): the plan `r0` on `pre`, or the plan on a quant-aware
    retrained copy of `model` when that one is faithful and faster (module docstring)."""
    from edgeslim.passes.quantize_int8 import Pick, per_layer_int8, stream_columns

    work0 = pre.parent  # the first plan's candidates
    floats = fidelity_floats(r0)
    if not floats:
        return r0, work0, {"skipped": "the plan kept no layer float for fidelity"}
    full = next((x for x in r0.rows if x["candidate"] == "int8-full"), None)
    if full is not None and full["speedup_vs_fp32"] <= MIN_FULL_SPEEDUP:
        return r0, work0, {"skipped": f"full INT8 ran no faster than FP32 here ({full['speedup_vs_fp32']:.2f}x): "
                                      "floating fewer layers would not pay"}
    if model is None or ctx.export is None:
        return r0, work0, {"skipped": "no PyTorch model to retrain (the stage's input is ONNX only)"}
    t0 = time.perf_counter()
    baked, notes = quant_aware_copy(model, task, cfg, ctx)
    base = ctx.stage_dir / "recover"
    work = base / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    exported = base / "float.onnx"
    notes["export"] = ctx.export(baked, exported)
    pre1 = work / "float.pre.onnx"
    oq.preprocess(exported, pre1)
    feeds = oq.calibration_feeds(pre1, task.calibration(cfg.calibration_samples, ctx.seed))
    # the copy was fitted on training rows, the calibration rows among them: its plan judges on validation rows
    judged = oq.calibration_feeds(pre1, task.x_val[:cfg.calibration_samples])
    r1 = per_layer_int8(pre1, work, feeds, task.x_val, task.y_val, clock, opts,
                        Pick(cfg.max_accuracy_drop, cfg.prefer, reference=pre, judge_feeds=judged),
                        state_columns=stream_columns(ctx))
    times = clock.times({"plan": r0.path.read_bytes(), "recovered": r1.path.read_bytes()})
    rt = ratio(times["recovered"], times["plan"])
    take = r1.faithful and rt.hi < 1.0
    row = next(x for x in r1.rows if x["candidate"] == r1.chosen)
    notes.update({
        "why": "the INT8 plan kept layers float for fidelity: retrained with int8 fake quantization, planned again",
        "plan_fidelity_floats": len(floats),
        "plan_judged_on": f"{sum(len(next(iter(f.values()))) for f in judged)} validation rows",
        "recovered_format": f"{r1.chosen} ({len(fidelity_floats(r1))} layers float for fidelity)",
        "recovered_val_accuracy": row["val_accuracy"],
        # unrounded: a bound of 0.9996 written as 1.0 would contradict the decision it made
        "time_ratio_recovered_vs_plan": [rt.median, rt.lo, rt.hi],
        "kept": "recovered" if take else "plan",
        "kept_why": (f"faithful and faster: time ratio {rt.median:.4f} (95% CI {rt.lo:.4f}-{rt.hi:.4f})" if take else
                     ("not faithful" if not r1.faithful else
                      f"not faster with confidence: time ratio {rt.median:.4f} (95% CI {rt.lo:.4f}-{rt.hi:.4f})")),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    if not take:
        return r0, work0, notes
    dst = r0.path
    shutil.copyfile(r1.path, dst)
    return dataclasses.replace(r1, path=dst), work, notes
