"""`quantize_int8`: static INT8 post-training quantization with ONNX Runtime's tooling (QDQ, calibrated on
the task). With `per_layer` (default) the INT8 plan (`quant.int8_plan`) keeps float the layers that break
fidelity or run slower in INT8 on this CPU, and the mixed model, full INT8 and FP32-with-int8-weights are
timed against FP32, interleaved, and picked by `measure.decide` within `max_accuracy_drop`
(`per_layer_int8` below). Without it, every candidate integer format is timed and the fastest one within
`max_accuracy_drop` is kept (said loudly when it is slower than FP32). It reads the previous stage's ONNX:
the stage, and every one after it, is ONNX-only.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import Field, field_validator
from torch import nn

from edgeslim import resources
from edgeslim.data import Task
from edgeslim.distill.matching import Matching
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.measure.arena import plan_activation_arena
from edgeslim.measure.decide import Option, choose_option, ratio
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.affine_conv import affine_as_conv
from edgeslim.onnxkit.graph import name_nodes, save
from edgeslim.onnxkit.quant import IntFormat, parse_format
from edgeslim.onnxkit.session import kernel_signature, onnx_accuracy, session
from edgeslim.onnxkit.weight_only import weight_only
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import int8_plan
from edgeslim.quant import recurrent as rq
from edgeslim.quant.dynamic_lstm import dynamic_lstm
from edgeslim.quant.qdq import layer_report
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.qdq_shrink import shrink
from edgeslim.quant.stream_eval import StreamData

DEFAULT_CANDIDATES = ("u8s8-pc", "u8s8-rr-pc", "s8s8-pc")  # per-tensor weights lose precision, never time


class QuantizeInt8(PassConfig):
    calibration_samples: int = Field(256, ge=1, description="training samples used to calibrate ranges")
    # select: per tensor among the four, validated end to end (per_layer only; else minmax)
    method: Literal["minmax", "percentile", "entropy", "mse", "select"] = "select"
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
    # per_layer: INT8 only where it is faithful and faster on this CPU (quant.int8_plan); layers whose
    # INT8 kernel is slower keep FP32 compute with int8 weights on disk; w8 and full INT8 compete too
    per_layer: bool = True
    prefer: Literal["balanced", "size", "speed"] = "balanced"
    min_cosine: float = Field(0.99, gt=0, le=1, description="per_layer: logits cosine vs FP32 the plan keeps")
    # Used when select=fixed. u8 activations + reduced-range s8 weights are fastest on AVX2 without VNNI.
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = True
    recover: Matching | None = Field(None, description="per_layer: when the plan keeps layers float for "
                                     "fidelity, retrain a copy with int8 fake quantization by function matching "
                                     "from the original, plan again, keep the faster faithful model "
                                     "(`passes.int8_recover`)")


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
    feeds = oq.calibration_feeds(ctx.prev_onnx, calib)  # a fixed batch (one sample at a time) is fed as it is
    prev = ctx.prev_onnx
    resources.check_calibration_memory(lambda: plan_activation_arena(prev, reorder=False).naive_bytes, prev.name,
                                "use a smaller model input", batch=min(len(calib), resources.CALIB_BATCH))
    work = ctx.stage_dir / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "float.pre.onnx"
    oq.preprocess(ctx.prev_onnx, pre)
    if cfg.per_layer and cfg.select == "measure" and act_overrides is None:
        return _per_layer(model, task, cfg, ctx, pre, feeds)
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
        method = cfg.method if cfg.method in ("minmax", "percentile", "entropy") else "minmax"
        oq.quantize_static(pre, raw[f.name], feeds, f, oq.StaticQuant(method=method, act_overrides=act_overrides))
        recurrent = rq.weight_only_recurrent(raw[f.name], raw[f.name])
        oq.compact_onnx(raw[f.name], paths[f.name])
    cols = stream_columns(ctx)
    fp32_acc = onnx_accuracy(pre, task.x_val, task.y_val, state_columns=cols)
    # the format is chosen by measurement: the measurement core times FP32 and every candidate interleaved
    lat = {k: v.p50_ms for k, v in ctx.measure.time_together({"fp32": pre, **paths}, {"input": task.x_test[:1]}).items()} \
        if len(fmts) > 1 else {}
    rows = []
    for f in fmts:
        rows.append({
            "format": f.name, "val_accuracy": round(onnx_accuracy(paths[f.name], task.x_val, task.y_val,
                                                                  state_columns=cols), 6),
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
    notes = {
        "format": f"QDQ {best['format']}", "why": why, "fp32_val_accuracy": round(fp32_acc, 6),
        "calibration": {"method": cfg.method if cfg.method in ("minmax", "percentile", "entropy") else "minmax",
                        "samples": len(calib)}, "tried": rows, "layers": layers,
    }
    if recurrent:
        notes["recurrent_weight_only"] = recurrent
        notes["recurrent_note"] = rq.NOTE + " (static QDQ quantizes their neighbours only)"
    return PassResult(None, onnx=dst, notes=notes)


def _per_layer(model: nn.Module | None, task: Task, cfg: QuantizeInt8, ctx: RunContext, pre: Path,
               feeds: list) -> PassResult:
    """The per-layer path (`per_layer_int8` below): plan, three candidates, the measured pick (and with
    `recover`, the same on a quant-aware retrained copy: `passes.int8_recover`)."""
    from edgeslim.quant.int8_types import FORMATS, Int8Options

    fmts = tuple(parse_format(c, "quantize_int8.candidates").name for c in cfg.candidates) or FORMATS
    opts = Int8Options(formats=fmts, calib=cfg.method, target_cosine=cfg.min_cosine, seed=ctx.seed,
                       threads=ctx.measure.threads)
    # every timing decision asks the measurement core: batch 1, the pipeline's latency setting
    x1 = task.x_test[:1].astype(np.float32)
    name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    clock = ctx.measure.clock({name: x1}, seconds=4.0)
    work = pre.parent
    r = per_layer_int8(pre, work, feeds, task.x_val, task.y_val, clock, opts, Pick(cfg.max_accuracy_drop, cfg.prefer),
                       state_columns=stream_columns(ctx))
    recovery = None
    if cfg.recover is not None:
        from edgeslim.passes.int8_recover import recover_plan

        r, work, recovery = recover_plan(model, task, cfg, ctx, r, pre, opts, clock)
    report = {"tried": r.rows, "chosen": r.chosen, "why": r.why, "int8_plan": r.plan.report()}
    p = r.plan
    chosen = base_candidate(r.chosen)
    src = {"int8-mixed": "int8-mixed.raw.onnx", "int8-full": "int8-full.raw.onnx"}.get(chosen)
    if src:  # compare against the plan's float model: equalisation rescales channels between layers
        save(p.float_model, work / "float.plan.onnx")
    layers = layer_report(work / "float.plan.onnx", work / src, task.x_val[:128]) if src else []
    float_why = {} if chosen == "int8-full" else (
        p.float_units if chosen == "int8-mixed" else dict.fromkeys(p.units.quant, f"{r.chosen} chosen: FP32 compute"))
    layers += [{"layer": u, "op": p.units.op[u], "bits": 32, "weight_dtype": "fp16 storage, fp32 compute"
                if w.startswith(("fidelity", "w16")) else "int8 storage, fp32 compute", "float_because": w,
                "sqnr_db": None} for u, w in float_why.items()]
    report["layers"] = layers
    write_json(ctx.stage_dir / "quant_report.json", report)
    shutil.rmtree(pre.parent)
    shutil.rmtree(ctx.stage_dir / "recover", ignore_errors=True)
    notes = {
        "format": f"{r.chosen} ({p.fmt}, {len(p.units.quant) - len(float_why)} layers INT8, {len(float_why)} float)"
                  if r.chosen not in WEIGHT_ONLY else WEIGHT_ONLY[r.chosen],
        "why": r.why, "calibration": {"method": cfg.method, "samples": sum(len(next(iter(f.values()))) for f in feeds)},
        "tried": r.rows, "float_layers": float_why, "plan_notes": p.notes, "layers": layers,
        "speed_decisions": getattr(clock, "method", "measured: interleaved on this host"),
    }
    if recovery is not None:
        notes["recover"] = recovery
    if r.worst_output:
        notes["worst_output"] = r.worst_output
    if r.val_score:  # no labels: which figure bound the chosen candidate's validation score, one step or stream
        notes.update(r.val_score)
    if r.slower_than_fp32:
        notes["slower_than_fp32"] = r.slower_than_fp32
    weight_only_ops = [op for op in r.recurrent if not (op == "LSTM" and r.chosen.endswith(LSTM8))]
    if r.chosen.endswith(LSTM8):
        notes["recurrent_int8"] = ("LSTM computed in int8: ONNX Runtime's DynamicQuantizeLSTM, int8 W and R, each "
                                   "step's inputs quantized on the fly (`quant.dynamic_lstm`)")
    if weight_only_ops:
        notes["recurrent_weight_only"] = weight_only_ops
        notes["recurrent_note"] = rq.NOTE + " (static QDQ quantizes their neighbours only)"
    return PassResult(None, onnx=r.path, notes=notes)


# The per-layer path: the INT8 plan on a task model, then a pick by measurement.
#
# Three models compete against the stage's FP32 input, timed interleaved at batch 1 (the pipeline's
# latency setting) and judged by `measure.decide.choose_option` (the same rule as `edgeslim optimize`):
#   int8-mixed  the plan: INT8 where it is faithful and faster here, float (int8 weights on disk) elsewhere
#   int8-full   every layer INT8 in the plan's integer format (what the pass did before)
#   w8          FP32 compute with int8 weight storage (the plan with every layer float)
#   w16         FP32 compute with fp16 weight storage (Cast folded at load: the FP32 input's speed, half its
#               size): the faithful fallback when no INT8 candidate is both faithful and at least as fast
#               (a VAD whose recurrent state INT8 damages)
#   +lstm8      int8-mixed and int8-full again with each LSTM as ONNX Runtime's DynamicQuantizeLSTM (int8 W/R
#               compute; `quant.dynamic_lstm`), where the model has LSTMs and the clock times on this host
# A candidate must stay within `max_drop` points of the FP32 validation accuracy. If none qualifies
# under the rule (all slower than FP32), the fastest faithful one is written and the stage says, in its
# notes, that it is slower than FP32: thin layers (a pruned ResNet-8 on 8x8 digits) often run slower in
# INT8 than in FP32 on x86, and a compression step must not undo the previous one's speed silently.


WEIGHT_ONLY = {"w8": "w8 (FP32 compute, int8 weights on disk)", "w16": "w16 (FP32 compute, fp16 weights on disk)"}
LSTM8 = "+lstm8"  # a candidate's variant with its LSTMs computed in int8 (`quant.dynamic_lstm`)


def base_candidate(name: str) -> str:
    """The plan's candidate a written model is made from ('int8-mixed+lstm8' -> 'int8-mixed')."""
    return name.removesuffix(LSTM8)


@dataclass
class StageResult:
    path: Path                  # the written model (inside the stage folder)
    chosen: str
    why: str
    rows: list[dict]            # every candidate: accuracy, size, latency, ratio to FP32, why
    plan: int8_plan.Int8Plan
    slower_than_fp32: str | None  # set when the written model is slower than the FP32 input
    recurrent: list[str]        # GRU/LSTM/RNN nodes given weight-only INT8 (no integer kernel in ORT)
    worst_output: dict | None = None  # several outputs, no labels: the pick's worst output and its val cosine
    val_score: dict | None = None     # no labels: what bound the chosen candidate's val score (`Score.notes`)
    faithful: bool = True             # the chosen candidate is within the pick's `max_drop` of FP32


@dataclass(frozen=True)
class Pick:
    """How `per_layer_int8` judges its candidates: within `max_drop` points of the FP32 model's validation
    accuracy, `prefer` (`measure.decide.choose_option`), and against which FP32 model. `reference`: the model the
    plan's fidelity and the pick's bar are measured against, when not the one quantized (a quant-aware retrained
    copy is held to the stage's own FP32 input, `passes.int8_recover`). `judge_feeds`: the feeds the plan's one-step
    fidelity judgments run on, when not the calibration feeds (a copy trained on the calibration rows is judged on
    validation rows)."""

    max_drop: float
    prefer: str = "balanced"
    reference: Path | None = None
    judge_feeds: list[dict] | None = None


def per_layer_int8(
    pre: Path, work: Path, feeds: list[dict], x_val: np.ndarray, y_val: np.ndarray, clock: int8_plan.Clock,
    opts: int8_plan.Int8Options, pick: Pick, state_columns: dict[str, int] | None = None,
) -> StageResult:
    """Plan, build the three candidates in `work`, measure, choose; the chosen model is written to
    `work.parent / "model.onnx"`. `pre` is the FP32 model (ORT pre-processed), `feeds` the calibration batches,
    `clock` the measurement core's (`ctx.measure.clock` on the batch-1 timing input): this pass times nothing
    itself. `state_columns` (a model with recurrent state, `stream_columns`): every candidate is judged over the
    validation streams, its own state carried, and so is every fidelity judgment of the plan that builds them
    (`quant.stream_eval`)."""
    model = onnx.load(str(pre))
    name_nodes(model)
    judge_fp = pick.reference or pre
    fp = session(judge_fp)
    judged = feeds if pick.judge_feeds is None else pick.judge_feeds
    ref = [fp.run(None, f) for f in judged]
    streams = StreamData(x_val, y_val, state_columns) if state_columns and np.asarray(y_val).dtype.kind == "f" \
        else None  # the plan judges as the pick does
    plan = int8_plan.build_plan(model, feeds, ref, opts, clock, streams=streams, judge_feeds=judged)
    assert plan.full is not None
    every = set(plan.units.quant)
    w8 = keep_float(plan.full, plan.units.nodes(every), min_elements=16, float_model=plan.float_model)
    w16 = weight_only(onnx.load(str(pre)), kind="fp16", min_elements=16)[0]  # the faithful, not-slower fallback
    models = {"int8-mixed": plan.model, "int8-full": shrink(plan.full)[0], "w8": w8, "w16": w16}
    affine = {k: affine_as_conv(m) for k, m in models.items()}  # exact; kept in ORT's blocked layout
    if any(affine.values()):
        plan.notes.append(f"constant per-channel Mul/Add chains on feature maps written as 1x1 depthwise convs "
                          f"(`onnxkit.affine_conv`): {affine['int8-mixed']} in int8-mixed")
    paths = {}
    recurrent: list[str] = []
    raws = {}
    timed_here = getattr(clock, "device", None) is None  # a device's cost model does not know the int8 LSTM
    for k, m in models.items():
        raws[k] = work / f"{k}.raw.onnx"
        save(m, raws[k])
        if timed_here and k in ("int8-mixed", "int8-full") and dynamic_lstm(raws[k], work / f"{k}{LSTM8}.raw.onnx"):
            raws[k + LSTM8] = work / f"{k}{LSTM8}.raw.onnx"  # the same with int8 LSTM compute (`quant.dynamic_lstm`)
    for k, raw in raws.items():
        rec = rq.weight_only_recurrent(raw, raw)  # static QDQ has no GRU/LSTM/RNN kernels
        recurrent = rec if k == "int8-mixed" else recurrent
        paths[k] = work / f"{k}.onnx"
        oq.compact_onnx(raw, paths[k])  # short tensor names: on a small model the names are a large share
    times = clock.times({"fp32": judge_fp.read_bytes(), **{k: p.read_bytes() for k, p in paths.items()}})
    by: dict[str, dict[str, float]] = {"fp32": {}}  # without labels: each output's val fidelity
    detail: dict[str, dict] = {"fp32": {}}  # without labels: what bound each candidate's score
    fp32_acc = onnx_accuracy(judge_fp, x_val, y_val, by_output=by["fp32"], state_columns=state_columns,
                             detail=detail["fp32"])
    opts_ = []
    rows = []
    for k, p in paths.items():
        by[k], detail[k] = {}, {}
        acc = onnx_accuracy(p, x_val, y_val, by_output=by[k], state_columns=state_columns, detail=detail[k])
        ok = (fp32_acc - acc) * 100 <= pick.max_drop + 1e-9
        opts_.append(Option(k, p.stat().st_size, ok, times[k], kernels=kernel_signature(p)))
        r = ratio(times[k], times["fp32"])
        rows.append({"candidate": k, "val_accuracy": round(acc, 6), "size_bytes": p.stat().st_size,
                     **({"val_score_bound": detail[k]["val_score_bound"]} if detail[k] else {}),
                     **({"val_by_output": {o: round(v, 6) for o, v in by[k].items()},
                         "worst_output": _worst(by[k])} if len(by[k]) > 1 else {}),
                     "latency_ms_p50": round(float(np.median(times[k])) * 1e3, 4),
                     "fp32_latency_ms_p50": round(float(np.median(times["fp32"])) * 1e3, 4),
                     "speedup_vs_fp32": round(r.speedup, 3), "speedup_ci": [round(1 / r.hi, 3), round(1 / r.lo, 3)]})
    fp_size = judge_fp.stat().st_size
    best = choose_option(opts_, times["fp32"], fp_size, prefer=pick.prefer)  # type: ignore[arg-type]
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
    worst = None
    if len(by[best.name]) > 1:  # several outputs, no labels: the score picked on is the worst output's
        wo = _worst(by[best.name])
        worst = {"output": wo, "val_cosine": round(by[best.name][wo], 6), "fp32_val_cosine": round(by["fp32"][wo], 6),
                 "by_output": {k: round(v, 6) for k, v in by[best.name].items()}}
    bound = {k: v for k, v in detail[best.name].items() if k in ("val_score_bound", "val_score_mode")}
    return StageResult(dst, best.name, best.why, rows, plan, slower, recurrent, worst, bound or None,
                       faithful=best.faithful)


def stream_columns(ctx: RunContext) -> dict[str, int] | None:
    """{state output: its packed column} of a run's model with recurrent state (`onnxkit.scoring.state_columns`
    of `ctx.spec["layout"]`, `run --inputs`); None otherwise: the validation score is one step."""
    from edgeslim.onnxkit.scoring import state_columns

    return state_columns(ctx.spec["layout"]) or None if isinstance(ctx.spec.get("layout"), dict) else None


def _worst(scores: dict[str, float]) -> str:
    """The output with the lowest score (ties: the first)."""
    return min(scores.items(), key=lambda kv: kv[1])[0]
