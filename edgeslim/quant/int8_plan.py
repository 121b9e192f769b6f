"""Static INT8 that stays faithful and pays off: the one recipe `edgeslim optimize` and `quantize_int8` share.

    float model ─► fold BatchNorm / constant affine into convs, fuse hard-swish   (onnxkit.bnfold, patterns)
                ─► cross-layer equalisation                                      (quant.cle)
                ─► activation ranges per tensor (MinMax/percentile/entropy/MSE)  (quant.calib_select)
                ─► AdaRound on the layers whose weight rounding hurts most        (quant.adaround)
                ─► bias correction                                               (quant.bias_correction)
                ─► (option) ranges of the most sensitive layers, end to end      (quant.range_search)
                ─► QDQ INT8 in the integer format that runs fastest here (timed)
                ─► keep float the layers whose quantization breaks the outputs   (quant.layer_select)
                ─► keep float the layers whose INT8 kernels are slower here      (quant.layer_select)
                ─► fidelity floats' weights int8 on disk where fidelity allows   (quant.float_storage)

Every step can be switched off (`Int8Options`) so benchmarks can show what each contributes. Timing is
injected (a `Clock`: per-round times of several models from one interleaved run, the per-round ratio
rule to compare them, and ONNX Runtime's per-kernel profile; the real one is the measurement core's,
`Measurer.clock` -> `measure.decide.InterleavedClock`, on the one timer): this package sits below the
measurement layer and times nothing itself, and tests feed synthetic timings.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.bnfold import fold_into_convs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.patterns import fuse_hardswish
from edgeslim.quant import calib_select, device_choice, gptq
from edgeslim.quant.float_storage import plan_storage
from edgeslim.quant.int8_types import FORMAT_MARGIN, Clock, Int8Options, Int8Plan
from edgeslim.quant.layer_select import (
    WEIGHT_CODES_MIN,
    Profiler,
    Units,
    UnitTime,
    fidelity_fallback,
    speed_fallback,
    units,
)
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.qdq_shrink import shrink
from edgeslim.quant.range_search import plan_step as range_search_step
from edgeslim.quant.stream_eval import Evaluate, StreamData, evaluator, plan_evaluator


def prepare_float(model: onnx.ModelProto, opts: Int8Options, notes: list[str]) -> onnx.ModelProto:
    """The float model to quantize: folded and fused as `opts` says (outputs unchanged up to rounding)."""
    fm = onnx.ModelProto()
    fm.CopyFrom(model)
    if opts.fold:
        a = fold_into_convs(fm)
        h = fuse_hardswish(fm)
        b = fold_into_convs(fm)
        n_bn, n_aff = a["batchnorm"] + b["batchnorm"], a["affine"] + b["affine"]
        if n_bn or n_aff or h:
            notes.append(f"folded {n_bn} BatchNorm and {n_aff} constant Mul/Add into convs, fused {h} hard-swish")
    return fm


# ops ORT's QDQ registry lacks but its QDQ fusions (and QOperator) run in INT8: quantizing them keeps
# residual adds, attention/SE products and concatenations between INT8 layers free of conversions
EXTRA_OPS = {"Add", "Mul", "Concat", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax"}


def op_types(opts: Int8Options) -> list[str]:
    return sorted((set(oq.qdq_ops(set(opts.exclude_ops))) | EXTRA_OPS) - set(opts.exclude_ops))


def quantize(fm: onnx.ModelProto, feeds: Sequence[Feed], fmt: str, ranges: dict, opts: Int8Options) -> onnx.ModelProto:
    """Fully quantized QDQ model of `fm` in `fmt` with the activation `ranges` (no calibration run)."""
    return oq.quantize_static_model(fm, feeds, oq.parse_format(fmt), oq.StaticQuant(
        op_types=op_types(opts), exclude_nodes=sorted(opts.exclude_nodes), ranges=ranges, keep_activations=True))


def refloat(plan: Int8Plan, more: dict[str, str], feeds: Sequence[Feed], ref: Sequence[list[np.ndarray]],
            threads: int = 1) -> Int8Plan:
    """`plan` with the units in `more` ({unit: why}) also kept float; 'fidelity...' reasons get the
    original weights."""
    assert plan.full is not None
    fl = {**plan.float_units, **more}
    exact = [u for u, w in fl.items() if w.startswith("fidelity")]
    m = keep_float(plan.full, plan.units.nodes(fl), exact=plan.units.nodes(exact), float_model=plan.float_model,
                   int8_min_elements=WEIGHT_CODES_MIN, exact_int8=plan.units.nodes(plan.exact_int8))
    cos = evaluator(feeds, ref, threads)(m, len(feeds))
    return replace(plan, model=m, float_units=fl, int8_units=[u for u in plan.int8_units if u not in fl],
                   cosine=cos, notes=plan.notes + [f"{len(more)} more layers kept float: {', '.join(more)}"])


@dataclass
class _Run:
    """What every step of one `build_plan` shares."""

    feeds: Sequence[Feed]
    opts: Int8Options
    evaluate: Evaluate
    notes: list[str] = field(default_factory=list)
    steps: dict = field(default_factory=dict)  # what each step measured (for ablation tables)
    spent: dict[str, float] = field(default_factory=dict)  # seconds per step

    def cos_of(self, fm: onnx.ModelProto, fmt: str, ranges: dict) -> float:
        """Worst-output cosine of `fm` fully quantized in `fmt` with `ranges`, on every feed."""
        return self.evaluate(quantize(fm, self.feeds, fmt, ranges, self.opts), len(self.feeds))

    def judge(self, step: str, what: str, before: float, after: float) -> bool:
        """Record a technique's effect on the fully quantized model; True when it pays (is kept)."""
        kept = after > before
        self.notes.append(f"{what}: cosine {before:.4f} -> {after:.4f} " + ("(kept)" if kept else "(dropped: no gain)"))
        self.steps[step] = {"what": what, "before": before, "after": after, "kept": kept}
        return kept


def build_plan(model: onnx.ModelProto, feeds: Sequence[Feed], ref: Sequence[list[np.ndarray]], opts: Int8Options,
          clock: Clock, profiler: Profiler | None = None, streams: StreamData | None = None,
          judge_feeds: Sequence[Feed] | None = None) -> Int8Plan:
    """Run the whole recipe (module docstring) on `model` (float, optimised, nodes named). `feeds` calibrate;
    the one-step fidelity judgments run on `judge_feeds` (default: `feeds`), `ref` holding the reference outputs
    per judged feed; `clock` times whole models and (unless `profiler` is given) profiles per-node kernels, on its
    own feed. `streams` (a model with recurrent state): every fidelity judgment runs its validation streams with
    the state carried (`quant.stream_eval`), not one step per feed."""
    notes: list[str] = []  # speed decisions are made for the clock's device (quant.device_choice)
    opts = device_choice.adapt_options(opts, getattr(clock, "device", None), notes)
    worst: dict = {}
    judge = (plan_evaluator(model, streams, opts.threads, worst, notes)
             or evaluator(feeds if judge_feeds is None else judge_feeds, ref, opts.threads, worst))
    run = _Run(feeds, opts, judge, notes)
    if profiler is None:
        def profiler(models: dict[str, bytes]) -> dict[str, dict[str, float]]:
            return clock.profile(models, runs=opts.profile_runs)
    with _timed(run.spent, "prepare"):
        fm = prepare_float(model, opts, run.notes)
    with _timed(run.spent, "calibration"):
        ranges, calib_counts, method, cos = _ranges(fm, feeds, opts, run.evaluate, run.notes, run.steps)
    fm, qm, ranges, cos = _weight_steps(run, fm, ranges, method, cos)
    if opts.range_search and cos < opts.target_cosine:
        with _timed(run.spent, "range_search"):
            ranges, cos = range_search_step(qm, feeds, ranges, cos,
                                            lambda r: quantize(qm, feeds, opts.formats[0], r, opts), run.evaluate,
                                            opts.probe_feeds, opts.seed, run.notes, run.steps)
    with _timed(run.spent, "format"):
        fmt, q = _choose_format(qm, fm, feeds, ranges, opts, clock, run.notes, run.steps)
    run.steps["full_cosine"] = cos
    us = units(q)
    float_units, fixed, times = _layer_steps(run, q, fm, us, profiler)
    final = keep_float(q, us.nodes(float_units), exact=us.nodes(fixed), float_model=fm, int8_min_elements=WEIGHT_CODES_MIN)
    if len(float_units) > len(fixed):  # whole-model timing has the last word on the per-layer speed choice
        with _timed(run.spent, "speed_check"):
            final, float_units = _check_speed_choice(run, clock, q, fm, us, final, float_units, fixed)
    final, cut = shrink(final)  # what ORT drops at load, dropped on disk too (quant.qdq_shrink)
    if any(cut.values()):
        run.notes.append(f"shrink: {cut['relus']} ReLUs fused into their quantize, {cut['zero_points']} zero "
                         "zero-points dropped")
    with _timed(run.spent, "storage"):
        rounded = gptq.grid_weights(fm, feeds, us.nodes(fixed), WEIGHT_CODES_MIN, opts.seed, run.notes) if opts.gptq else {}
        sc = plan_storage(q, (fm, rounded), us.nodes(float_units), {u: us.nodes([u]) for u in fixed}, final, run.evaluate,
                          opts.target_cosine, len(feeds), opts.probe_feeds, worst) if fixed else None
    final, cos = (sc.model, sc.cosine) if sc else (final, run.evaluate(final, len(feeds)))
    if sc:  # the weights of the fidelity floats: int8 codes where the plan keeps its fidelity, else fp16
        run.notes.append(f"weights of the {len(fixed)} layers kept float for fidelity: {sc.why}")
        run.steps["exact_storage"] = sc.record()
    if worst:  # several outputs: which one the plan's fidelity is
        out = model.graph.output[worst["output"]].name
        run.steps["worst_output"] = {"output": out, "cosine": worst["cosine"]}
        run.notes.append(f"worst output {out!r}: cosine {worst['cosine']:.4f} (each output judged on its own, "
                         "per sample and over all values)")
    int8_units = [u for u in us.quant if u not in float_units]
    run.notes.append("time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.spent.items()))
    run.steps["seconds"] = run.spent
    return Int8Plan(final, fm, fmt, float_units, int8_units, times, cos, run.notes, calib_counts,
                    quantized_from=qm, ranges=ranges, full=q, units=us, steps=run.steps,
                    exact_int8=sc.int8_units if sc else [])


def _weight_steps(run: _Run, fm: onnx.ModelProto, ranges: dict, method: str, cos: float
                  ) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, float]:
    """Cross-layer equalisation, AdaRound, bias correction: each edits the float model the quantizer
    reads and is kept only where it pays (the fully quantized model's outputs get closer to the
    reference). Returns (float model, model to quantize, ranges, cosine)."""
    opts, feeds, fmt0 = run.opts, run.feeds, run.opts.formats[0]
    if opts.cle:
        with _timed(run.spent, "cle"):
            from edgeslim.quant.cle import equalize

            fe = _copy(fm)
            k = equalize(fe)
            if k:  # equalisation moves activation ranges: calibrate again with the same method
                stats = calib_select.collect(fe, feeds, seed=opts.seed)
                w = calib_select.channel_weights(fe)
                r2 = calib_select.choose_calibration(stats, w, calib_select.METHODS if method == "per-tensor" else (method,))[0]
                c2 = run.cos_of(fe, fmt0, r2)
                if run.judge("cle", f"cross-layer equalisation of {k} conv pairs", cos, c2):
                    fm, ranges, cos = fe, r2, c2
    qm = fm
    if opts.adaround:
        with _timed(run.spent, "adaround"):
            from edgeslim.quant.adaround import adaround

            m2, done = adaround(qm, feeds, fmt0, ranges, layers=opts.adaround_layers, seed=opts.seed)
            if done and run.judge("adaround", f"AdaRound on {len(done)} layers", cos, c2 := run.cos_of(m2, fmt0, ranges)):
                qm, cos = m2, c2
    if opts.bias_correction:
        with _timed(run.spent, "bias_correction"):
            from edgeslim.quant.bias_correction import correct_biases

            m2, k = correct_biases(qm, feeds, ranges, qmax=64 if "-rr" in fmt0 else 127, skip=set(opts.exclude_nodes))
            if k and run.judge("bias_correction", f"bias correction on {k} layers", cos,
                               c2 := run.cos_of(m2, fmt0, ranges)):
                qm, cos = m2, c2
    return fm, qm, ranges, cos


def _layer_steps(run: _Run, q: onnx.ModelProto, fm: onnx.ModelProto, us: Units, profiler: Profiler
                 ) -> tuple[dict[str, str], list[str], dict[str, UnitTime]]:
    """(float units with why, units kept float for fidelity, per-unit kernel times): the fidelity
    fallback by output sensitivity, then the speed choice by profiled kernel times."""
    opts = run.opts
    float_units: dict[str, str] = {}
    fixed: list[str] = []
    if opts.fidelity_fallback:
        with _timed(run.spent, "fidelity_fallback"):
            fb = fidelity_fallback(q, fm, us, run.evaluate, opts.target_cosine, probe_feeds=opts.probe_feeds,
                                   full_feeds=len(run.feeds))
        fixed = fb.float_units
        for u in fixed:
            float_units[u] = f"fidelity: alone in INT8 it costs {fb.sensitivity[u]:.2g} output cosine"
        run.notes.append(
            f"fidelity fallback: {len(fixed)}/{len(us.quant)} layers float to reach cosine >= {opts.target_cosine:g} "
            "(bisection: " + ", ".join(f"{k} float -> {c:.4f}" for k, c in fb.trail) + ")"
            + ("" if fb.met else "; NOT MET even with every layer float"))
        run.steps["fidelity"] = {"float": len(fixed), "of": len(us.quant), "met": fb.met}
    times: dict[str, UnitTime] = {}
    if opts.speed_choice:
        with _timed(run.spent, "speed_choice"):
            sc = speed_fallback(q, fm, us, fixed, profiler)
        times = sc.times
        for u in sc.slow_units:
            t = sc.decided.get(u)
            float_units[u] = "slower in INT8" + (f" ({t.int8_us:.0f} vs {t.fp32_us:.0f} us FP32)" if t else "")
        run.notes.append(f"speed choice: {len(sc.slow_units)} layers keep FP32 compute (INT8 kernel slower here), "
                         f"{sc.rounds} profile round(s)")
        run.steps["speed"] = {"float": len(sc.slow_units), "of": len(us.quant)}
    return float_units, fixed, times


SPEED_CHECK_MARGIN = 0.03  # the speed choice is undone only when that is more than 3% faster (whole CI)


def _check_speed_choice(run: _Run, clock: Clock, q: onnx.ModelProto, fm: onnx.ModelProto, us: Units,
                        mixed: onnx.ModelProto, float_units: dict[str, str], fixed: list[str]
                        ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Time the plan with and without its speed choice, interleaved. Per-kernel profiles miss costs
    ORT adds between kernels (layout changes, memory traffic), so the layers it kept float for speed
    go back to INT8 when the whole model is clearly faster that way (measured: ddddocr's YOLOX
    detector ran 2.35x vs 1.87x with every layer INT8)."""
    without = keep_float(q, us.nodes(fixed), exact=us.nodes(fixed), float_model=fm, int8_min_elements=WEIGHT_CODES_MIN)
    t = clock.times({"with": mixed.SerializeToString(), "without": without.SerializeToString()})
    r = clock.ratio(t["without"], t["with"])
    keep = r.speed_verdict(SPEED_CHECK_MARGIN) != "faster"
    n = len(float_units) - len(fixed)
    run.notes.append(f"speed check (whole model, interleaved): without the speed choice {r.speedup:.2f}x the speed "
                     f"with it -> " + ("kept" if keep else f"undone, {n} layers back to INT8"))
    run.steps["speed_check"] = {"without_vs_with_speedup": r.speedup, "kept": keep}
    if keep:
        return mixed, float_units
    return without, {u: w for u, w in float_units.items() if u in fixed}


@contextmanager
def _timed(spent: dict[str, float], step: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        spent[step] = time.perf_counter() - t0


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def _ranges(fm: onnx.ModelProto, feeds: Sequence[Feed], opts: Int8Options, evaluate, notes: list[str], steps: dict
            ) -> tuple[dict[str, tuple[float, float]], dict[str, int], str, float]:
    """(activation ranges, method -> tensor count, method, cosine of the fully quantized model with them).

    `select`: each uniform method and the per-tensor choice (`calib_select.choose_calibration`) are tried end to
    end on the fully quantized model; the closest to the reference wins (ties: per-tensor)."""
    stats = calib_select.collect(fm, feeds, seed=opts.seed)
    fmt0 = opts.formats[0]
    if opts.calib != "select":
        ranges = calib_select.choose_calibration(stats, None, (opts.calib,))[0]
        return ranges, {opts.calib: len(ranges)}, opts.calib, evaluate(quantize(fm, feeds, fmt0, ranges, opts),
                                                                       len(feeds))
    weights = calib_select.channel_weights(fm)
    per_tensor, picked, every = calib_select.choose_calibration(stats, weights)
    trials = {"per-tensor": per_tensor, **every}
    scored = {k: evaluate(quantize(fm, feeds, fmt0, r, opts), len(feeds)) for k, r in trials.items()}
    best = max(scored, key=lambda k: (scored[k], k == "per-tensor"))
    counts = dict(Counter(picked.values())) if best == "per-tensor" else {best: len(trials[best])}
    notes.append("calibration (fully quantized cosine): " + ", ".join(f"{k} {v:.4f}" for k, v in scored.items())
                 + f" -> {best}")
    steps["calibration"] = {"cosine": scored, "chosen": best}
    return trials[best], counts, best, scored[best]


def _choose_format(qm: onnx.ModelProto, fm: onnx.ModelProto, feeds: Sequence[Feed], ranges: dict, opts: Int8Options,
                   clock: Clock, notes: list[str], steps: dict) -> tuple[str, onnx.ModelProto]:
    """(format, fully quantized model) of the integer format that runs fastest here. A later format
    replaces an earlier one only when its whole per-round confidence interval is more than FORMAT_MARGIN
    faster: the first format (u8s8 without reduce_range) keeps the most precision, and on a CPU with
    VNNI the formats run the same kernels, so noise must not pick the 7-bit one (it did, once, on a
    loaded machine: PP-OCRv4 det then needed 36 float layers instead of 18)."""
    models = {f: quantize(qm, feeds, f, ranges, opts) for f in opts.formats}
    if len(models) == 1:
        return opts.formats[0], models[opts.formats[0]]
    times = clock.times({"fp32": fm.SerializeToString(), **{f: m.SerializeToString() for f, m in models.items()}})
    best = opts.formats[0]
    for f in opts.formats[1:]:
        if clock.ratio(times[f], times[best]).speed_verdict(FORMAT_MARGIN) == "faster":
            best = f
    notes.append("integer format (fully quantized, vs FP32): " + ", ".join(
        f"{f} {clock.ratio(times[f], times['fp32']).speedup:.2f}x" for f in opts.formats) + f" -> {best}")
    steps["format"] = {"speedup_vs_fp32": {f: clock.ratio(times[f], times["fp32"]).speedup for f in opts.formats},
                       "chosen": best}
    return best, models[best]



