"""Post-training quantization with ONNX Runtime's tooling: static INT8 (QDQ, calibrated on the task,
integer format chosen by measuring), dynamic INT8, FP16, and block-wise INT4 weight-only.

Every pass here is of kind "onnx": it reads the previous stage's ONNX and the stage becomes ONNX-only.
"""

from __future__ import annotations

import shutil
from typing import Literal

import onnx
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes, write_json
from edgeslim.measure.latency import interleaved_p50_ms
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import save
from edgeslim.onnxkit.quant import IntFormat, parse_format
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant.qdq import layer_report

DEFAULT_CANDIDATES = ("u8s8-pc", "u8s8-rr-pc", "s8s8-pc")  # per-tensor weights lose precision, never time


class QuantizeInt8(PassConfig):
    calibration_samples: int = Field(256, ge=1, description="training samples used to calibrate ranges")
    # select: per tensor among the four, validated end to end (per_layer only; else minmax)
    method: Literal["minmax", "percentile", "entropy", "mse", "select"] = "select"
    select: Literal["measure", "fixed"] = "measure"  # measure: time every candidate, keep the fastest good one
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES  # formats tried when select=measure
    max_accuracy_drop: float = Field(1.0, ge=0, description="points of val accuracy a format may lose vs FP32")
    # per_layer: INT8 only where it is faithful and faster on this CPU (quant.int8_plan); layers whose
    # INT8 kernel is slower keep FP32 compute with int8 weights on disk; w8 and full INT8 compete too
    per_layer: bool = True
    prefer: Literal["balanced", "size", "speed"] = "balanced"
    min_cosine: float = Field(0.99, gt=0, le=1, description="per_layer: logits cosine vs FP32 the plan keeps")
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


@register("quantize_int8", QuantizeInt8, kind="onnx")
def quantize_int8(model: nn.Module | None, task: Task, cfg: QuantizeInt8, ctx: RunContext) -> PassResult:
    """Static INT8 post-training quantization (QDQ); the integer format is chosen by measurement."""
    return static_int8(task, cfg, ctx)


def static_int8(
    task: Task, cfg: QuantizeInt8, ctx: RunContext, act_overrides: dict[str, tuple[float, int]] | None = None,
) -> PassResult:
    """The quantize_int8 pass; `act_overrides` ({tensor: (scale, uint8 zero point)}, e.g. learned by QAT)
    replaces calibration for those tensors."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_int8")
    calib = task.calibration(cfg.calibration_samples, ctx.seed)
    feeds = oq.array_feeds(oq.check_calibration(ctx.prev_onnx, calib), calib)
    work = ctx.stage_dir / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "float.pre.onnx"
    oq.preprocess(ctx.prev_onnx, pre)
    if cfg.per_layer and cfg.select == "measure" and act_overrides is None:
        return _per_layer(task, cfg, ctx, pre, work, feeds)
    if cfg.select == "fixed":
        fmts = [IntFormat(cfg.activation_type, cfg.reduce_range, cfg.per_channel)]
    else:
        if not cfg.candidates:
            raise EdgeslimError("quantize_int8: 'candidates' is empty; list at least one format, e.g. u8s8-rr-pc")
        fmts = [parse_format(c, "quantize_int8.candidates") for c in cfg.candidates]
    raw, paths = {}, {}
    for f in fmts:
        raw[f.name], paths[f.name] = work / f"{f.name}.raw.onnx", work / f"{f.name}.onnx"
        oq.quantize_static(pre, raw[f.name], feeds, f, method=cfg.method if cfg.method in ("minmax", "percentile",
                           "entropy") else "minmax", act_overrides=act_overrides)
        oq.compact_onnx(raw[f.name], paths[f.name])
    fp32_acc = onnx_accuracy(pre, task.x_val, task.y_val)
    lat = interleaved_p50_ms({"fp32": pre, **paths}, task.x_test[:1]) if len(fmts) > 1 else {}
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
        if float(best["latency_ms_p50"]) > float(best["fp32_latency_ms_p50"]):  # type: ignore[arg-type]
            why += "; SLOWER THAN FP32 (every format tried was: per_layer: true keeps slow layers float)"
    dst = ctx.stage_dir / "model.onnx"
    chosen = str(best["format"])
    shutil.copyfile(paths[chosen], dst)
    layers = layer_report(pre, raw[chosen], task.x_val[:128])
    write_json(ctx.stage_dir / "quant_report.json", {"tried": rows, "chosen": chosen, "why": why,
                                                     "fp32_val_accuracy": fp32_acc, "layers": layers})
    shutil.rmtree(work)
    return PassResult(None, onnx=dst, notes={
        "format": f"QDQ {best['format']}", "why": why, "fp32_val_accuracy": round(fp32_acc, 6),
        "calibration": {"method": cfg.method if cfg.method in ("minmax", "percentile", "entropy") else "minmax",
                        "samples": len(calib)}, "tried": rows, "layers": layers,
    })


def _per_layer(task: Task, cfg: QuantizeInt8, ctx: RunContext, pre, work, feeds: list) -> PassResult:
    """The per-layer path (`quant.int8_stage`): plan, three candidates, the measured pick."""
    from edgeslim.quant.int8_plan import FORMATS, Int8Options
    from edgeslim.quant.int8_stage import per_layer_int8

    fmts = tuple(parse_format(c, "quantize_int8.candidates").name for c in cfg.candidates) or FORMATS
    opts = Int8Options(formats=fmts, calib=cfg.method, target_cosine=cfg.min_cosine, seed=ctx.seed)
    r = per_layer_int8(pre, work, feeds, task.x_val, task.y_val, task.x_test[:1], opts, cfg.max_accuracy_drop,
                       prefer=cfg.prefer)
    report = {"tried": r.rows, "chosen": r.chosen, "why": r.why, "int8_plan": r.plan.report()}
    p = r.plan
    src = {"int8-mixed": "int8-mixed.raw.onnx", "int8-full": "int8-full.raw.onnx"}.get(r.chosen)
    if src:  # compare against the plan's float model: equalisation rescales channels between layers
        save(p.float_model, work / "float.plan.onnx")
    layers = layer_report(work / "float.plan.onnx", work / src, task.x_val[:128]) if src else []
    float_why = {} if r.chosen == "int8-full" else (
        p.float_units if r.chosen == "int8-mixed" else dict.fromkeys(p.units.quant, "w8 chosen: FP32 compute"))
    layers += [{"layer": u, "op": p.units.op[u], "bits": 32, "weight_dtype": "int8 storage, fp32 compute"
                if not w.startswith("fidelity") else "fp16 storage, fp32 compute", "float_because": w,
                "sqnr_db": None} for u, w in float_why.items()]
    report["layers"] = layers
    write_json(ctx.stage_dir / "quant_report.json", report)
    shutil.rmtree(work)
    notes = {
        "format": f"{r.chosen} ({p.fmt}, {len(p.int8_units)} layers INT8, {len(p.float_units)} float)"
                  if r.chosen != "w8" else "w8 (FP32 compute, int8 weights on disk)",
        "why": r.why, "calibration": {"method": cfg.method, "samples": sum(len(next(iter(f.values()))) for f in feeds)},
        "tried": r.rows, "float_layers": p.float_units, "plan_notes": p.notes, "layers": layers,
    }
    if r.slower_than_fp32:
        notes["slower_than_fp32"] = r.slower_than_fp32
    return PassResult(None, onnx=r.path, notes=notes)


class QuantizeDynamic(PassConfig):
    per_channel: bool = False
    reduce_range: bool = True


@register("quantize_dynamic", QuantizeDynamic, kind="onnx")
def quantize_dynamic(model: nn.Module | None, task: Task, cfg: QuantizeDynamic, ctx: RunContext) -> PassResult:
    """Dynamic INT8: weights stored int8, activations scaled at run time (for Linear/MatMul/RNN models)."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_dynamic")
    mm = ctx.stage_dir / "matmul.onnx"
    n = oq.gemm_to_matmul(ctx.prev_onnx, mm)
    dst = ctx.stage_dir / "model.onnx"
    oq.quantize_dynamic(mm, dst, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range)
    mm.unlink()
    ops = [x.op_type for x in onnx.load(str(dst)).graph.node]
    nq = sum(o in ("MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul") for o in ops)
    note = "Conv layers are left FP32 (dynamic quantization targets MatMul/Gemm/RNN)" if "Conv" in ops else ""
    return PassResult(None, onnx=dst, notes={"format": "dynamic int8", "gemm_rewritten": n,
                                             "quantized_matmuls": nq, "note": note})


class QuantizeFP16(PassConfig):
    pass


@register("quantize_fp16", QuantizeFP16, kind="onnx")
def quantize_fp16(model: nn.Module | None, task: Task, cfg: QuantizeFP16, ctx: RunContext) -> PassResult:
    """FP16 weights and compute (float32 model inputs/outputs kept); halves the file."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_fp16")
    dst = ctx.stage_dir / "model.onnx"
    write_bytes(dst, oq.convert_fp16(onnx.load(str(ctx.prev_onnx))).SerializeToString())
    return PassResult(None, onnx=dst, notes={
        "format": "fp16",
        "note": "ONNX Runtime's CPU provider has few FP16 kernels; it may insert casts, so CPU latency can "
                "be worse than FP32 (the stage latency is measured, not assumed)",
    })


class QuantizeInt4Weights(PassConfig):
    block_size: int = Field(32, ge=16, description="weights per scale along the input dimension (power of 2)")
    symmetric: bool = True


@register("quantize_int4_weights", QuantizeInt4Weights, kind="onnx")
def quantize_int4_weights(
    model: nn.Module | None, task: Task, cfg: QuantizeInt4Weights, ctx: RunContext
) -> PassResult:
    """Block-wise INT4 weight-only quantization of MatMul/Linear weights (ORT MatMulNBits)."""
    assert ctx.prev_onnx is not None
    if cfg.block_size & (cfg.block_size - 1):
        raise EdgeslimError(f"quantize_int4_weights.block_size: must be a power of two, got {cfg.block_size}")
    oq.check_float(ctx.prev_onnx, "quantize_int4_weights")
    mm = ctx.stage_dir / "matmul.onnx"
    oq.gemm_to_matmul(ctx.prev_onnx, mm)
    dst = ctx.stage_dir / "model.onnx"
    n = oq.quantize_int4_weights(mm, dst, cfg.block_size, cfg.symmetric)
    mm.unlink()
    convs = sum(x.op_type == "Conv" for x in onnx.load(str(dst)).graph.node)
    note = (f"{convs} Conv layers stay FP32: ONNX Runtime has no INT4 Conv kernel" if convs else "")
    if n == 0:
        note = ("no MatMul weight qualified for MatMulNBits (needs K >= 16); model unchanged. " + note).strip()
    return PassResult(None, onnx=dst, notes={"format": f"int4 weight-only, block {cfg.block_size}",
                                             "matmulnbits_nodes": n, "note": note})
