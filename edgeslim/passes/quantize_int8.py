"""`quantize_int8`: static INT8 post-training quantization with ONNX Runtime's tooling (QDQ, calibrated on
the task); with `select: measure` every candidate integer format is timed against FP32, interleaved, and
the fastest one within `max_accuracy_drop` is kept. It reads the previous stage's ONNX: the stage, and
every one after it, is ONNX-only.
"""

from __future__ import annotations

import shutil
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from edgeslim import resources
from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.measure.arena import plan_arena
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.quant import IntFormat, parse_format
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import recurrent as rq
from edgeslim.quant.qdq import layer_report

DEFAULT_CANDIDATES = ("u8s8-rr-pc", "u8s8-rr", "s8s8-pc", "s8s8")


class QuantizeInt8(PassConfig):
    calibration_samples: int = Field(256, ge=1, description="training samples used to calibrate ranges")
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    select: Literal["measure", "fixed"] = "measure"  # measure: time every candidate, keep the fastest good one
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES  # formats tried when select=measure

    @field_validator("candidates")
    @classmethod
    def _known_formats(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:  # a typo fails when the recipe is parsed, not after the earlier stages ran
            try:
                parse_format(c, "candidates")
            except EdgeslimError as e:
                raise ValueError(str(e).split(": ", 1)[1]) from None
        return v
    max_accuracy_drop: float = Field(1.0, ge=0, description="points of val accuracy a format may lose vs FP32")
    # Used when select=fixed. u8 activations + reduced-range s8 weights are fastest on AVX2 without VNNI.
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = True


def choose_format(rows: list[dict], fp32_acc: float, max_drop: float) -> tuple[dict, str]:
    """The fastest candidate within `max_drop` points of FP32 val accuracy, else the most accurate."""
    ok = [r for r in rows if (fp32_acc - r["val_accuracy"]) * 100 <= max_drop + 1e-9]
    if ok:
        best = min(ok, key=lambda r: r["latency_ms_p50"])
        why = (f"fastest of {len(ok)}/{len(rows)} formats within {max_drop:g} points of FP32 val accuracy "
               f"({best['latency_ms_p50']:.4f} ms vs FP32 {rows[0]['fp32_latency_ms_p50']:.4f} ms p50)")
        return best, why
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["latency_ms_p50"]))
    return best, f"no format within {max_drop:g} points of FP32; kept the most accurate (drop " \
                 f"{(fp32_acc - best['val_accuracy']) * 100:.2f} points)"


@register("quantize_int8", QuantizeInt8, consumes="onnx", produces="onnx")
def quantize_int8(
    model: nn.Module | None, task: Task, cfg: QuantizeInt8, ctx: RunContext,
    act_overrides: dict[str, tuple[float, int]] | None = None,
) -> PassResult:
    """Static INT8 post-training quantization (QDQ); the integer format is chosen by measurement.

    `act_overrides` ({tensor: (scale, uint8 zero point)}, e.g. learned by QAT) replaces calibration for
    those tensors."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_int8")
    calib = task.calibration(cfg.calibration_samples, ctx.seed)
    feeds = oq.array_feeds(oq.check_calibration(ctx.prev_onnx, calib), calib)
    prev = ctx.prev_onnx
    resources.check_calibration(lambda: plan_arena(prev, reorder=False).naive_bytes, len(calib), prev.name,
                                "lower calibration_samples in the recipe")
    work = ctx.stage_dir / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "float.pre.onnx"
    oq.preprocess(ctx.prev_onnx, pre)
    if cfg.select == "fixed":
        fmts = [IntFormat(cfg.activation_type, cfg.reduce_range, cfg.per_channel)]
    else:
        if not cfg.candidates:
            raise EdgeslimError("quantize_int8: 'candidates' is empty; list at least one format, e.g. u8s8-rr-pc")
        fmts = [parse_format(c, "quantize_int8.candidates") for c in cfg.candidates]
    raw, paths = {}, {}
    recurrent: list[str] = []  # static QDQ has no GRU/LSTM/RNN kernels: those get weight-only INT8
    for f in fmts:
        raw[f.name], paths[f.name] = work / f"{f.name}.raw.onnx", work / f"{f.name}.onnx"
        oq.quantize_static(pre, raw[f.name], feeds, f, method=cfg.method, act_overrides=act_overrides)
        recurrent = rq.weight_only_recurrent(raw[f.name], raw[f.name])
        oq.compact_onnx(raw[f.name], paths[f.name])
    fp32_acc = onnx_accuracy(pre, task.x_val, task.y_val)
    # the format is chosen by measurement: the measurement core times FP32 and every candidate interleaved
    lat = {k: v.p50_ms for k, v in ctx.measure.compare({"fp32": pre, **paths}, {"input": task.x_test[:1]}).items()} \
        if len(fmts) > 1 else {}
    rows = []
    for f in fmts:
        rows.append({
            "format": f.name, "val_accuracy": round(onnx_accuracy(paths[f.name], task.x_val, task.y_val), 6),
            "latency_ms_p50": round(lat.get(f.name, float("nan")), 4),
            "fp32_latency_ms_p50": round(lat.get("fp32", float("nan")), 4),
            "size_bytes": paths[f.name].stat().st_size,
        })
    if len(rows) == 1:
        best, why = rows[0], "fixed format (select: fixed)"
    else:
        best, why = choose_format(rows, fp32_acc, cfg.max_accuracy_drop)
    dst = ctx.stage_dir / "model.onnx"
    chosen = str(best["format"])
    shutil.copyfile(paths[chosen], dst)
    layers = layer_report(pre, raw[chosen], task.x_val[:128])
    write_json(ctx.stage_dir / "quant_report.json", {"tried": rows, "chosen": chosen, "why": why,
                                                     "fp32_val_accuracy": fp32_acc, "layers": layers})
    shutil.rmtree(work)
    notes = {
        "format": f"QDQ {best['format']}", "why": why, "fp32_val_accuracy": round(fp32_acc, 6),
        "calibration": {"method": cfg.method, "samples": len(calib)}, "tried": rows, "layers": layers,
    }
    if recurrent:
        notes["recurrent_weight_only"] = recurrent
        notes["recurrent_note"] = rq.NOTE + " (static QDQ quantizes their neighbours only)"
    return PassResult(None, onnx=dst, notes=notes)
