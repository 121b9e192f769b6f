"""Activation ranges of the most sensitive layers, chosen end to end (issue 23: PP-OCRv4 rec's INT8 plan).

The calibration step (`int8_plan._ranges`) gives every tensor one range: either one method for all tensors, or a
per-tensor pick by each tensor's own (local) quantization error. Neither is what the outputs see: on PP-OCRv4
rec, MSE ranges for all tensors scored 0.933 fully quantized, the local per-tensor pick 0.907.

So, after calibration and the weight steps, this step ranks the layer units by their output sensitivity (each
unit alone in INT8, the rest float, on `probe_feeds` feeds, as `layer_select.fidelity_fallback` ranks them) and,
for the most sensitive units in turn, tries every other calibration method's ranges on the tensors that unit
reads and writes; a change is kept only when the fully quantized model's score (all feeds, the plan's
evaluator) goes up. Greedy, bounded by `max_units` and `max_seconds`; every trial is quantize + one evaluation.
Picks use the calibration feeds only.

Measured on PP-OCRv4 rec (`benchmarks/bench_int8_diag.py --search`, docs/benchmarks.md): fully quantized score
0.9236 -> 0.9461 (6 of the 8 units tried changed, 229 s), but the fidelity fallback still keeps the same 33 of 51
units float to reach 0.99 (it floats the most sensitive units first, the ones the search improved; the rest is a
long tail). So the plan runs it only when asked (`Int8Options(range_search=True)`), and only when the fully
quantized model is below the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from edgeslim.onnxkit.inputs import Feed
from edgeslim.quant import calib_select
from edgeslim.quant.layer_select import Units, units
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.stream_eval import Evaluate

Ranges = dict[str, tuple[float, float]]
Quantize = Callable[[Ranges], onnx.ModelProto]  # ranges -> fully quantized model


@dataclass
class Search:
    ranges: Ranges
    score: float                                   # fully quantized score with `ranges` (all feeds)
    before: float
    changed: dict[str, str] = field(default_factory=dict)  # unit -> method now used on its tensors
    trials: int = 0
    units_tried: int = 0
    seconds: float = 0.0

    def note(self) -> str:
        what = ", ".join(f"{u} {m}" for u, m in self.changed.items()) or "no change kept"
        return (f"range search on the {self.units_tried} most sensitive layers ({self.trials} trials, "
                f"{self.seconds:.0f} s): score {self.before:.4f} -> {self.score:.4f} ({what})")


def unit_tensors(float_model: onnx.ModelProto, us: Units, unit: str, ranges: Ranges) -> set[str]:
    """Tensors with a range that the nodes of `unit` read or write (names of the float model)."""
    nodes = set(us.members[unit])
    out: set[str] = set()
    for n in float_model.graph.node:
        if n.name in nodes:
            out.update(i for i in n.input if i in ranges)
            out.update(o for o in n.output if o in ranges)
    return out


def unit_sensitivity(q: onnx.ModelProto, float_model: onnx.ModelProto, us: Units, evaluate: Evaluate,
                probe_feeds: int) -> dict[str, float]:
    """Unit -> 1 - score when only that unit is INT8 (the rest float with original weights)."""
    every = us.nodes(us.quant)
    out = {}
    for u in us.quant:
        fl = every - us.nodes([u])
        out[u] = 1.0 - evaluate(keep_float(q, fl, exact=fl, float_model=float_model), probe_feeds)
    return out


@dataclass(frozen=True)
class Limits:
    """How far `search_ranges` looks: feeds of the per-unit sensitivity probe, units tried (most sensitive
    first), wall seconds, the calibration statistics' seed and the calibration methods tried per unit."""

    probe_feeds: int = 4
    max_units: int = 8
    max_seconds: float = 240.0
    seed: int = 0
    methods: tuple[str, ...] = tuple(calib_select.METHODS)


def search_ranges(float_model: onnx.ModelProto, feeds: Sequence[Feed], ranges: Ranges, score: float,
                  quantize: Quantize, evaluate: Evaluate, limits: Limits = Limits()) -> Search:
    """Greedy per-unit choice of calibration method (module docstring). `float_model` is the model `quantize`
    reads (its activations define every method's range), `ranges` and `score` the current ranges and the fully
    quantized score with them on all feeds. Returns the ranges kept and what changed."""
    t0 = time.perf_counter()
    res = Search(dict(ranges), score, score)
    stats = calib_select.collect(float_model, feeds, seed=limits.seed)
    every = calib_select.choose_calibration(stats, None, limits.methods)[2]
    q = quantize(res.ranges)
    us = units(q)
    sens = unit_sensitivity(q, float_model, us, evaluate, limits.probe_feeds)
    order = sorted(us.quant, key=lambda u: (-sens[u], u))[:limits.max_units]
    for u in order:
        if time.perf_counter() - t0 > limits.max_seconds:
            break
        res.units_tried += 1
        ts = unit_tensors(float_model, us, u, res.ranges)
        for m in limits.methods:
            cand = {t: every[m][t] for t in ts if t in every[m]}
            if not cand or all(res.ranges[t] == r for t, r in cand.items()):
                continue
            trial = {**res.ranges, **cand}
            s = evaluate(quantize(trial), len(feeds))
            res.trials += 1
            if s > res.score:
                res.ranges, res.score, res.changed[u] = trial, s, m
            if time.perf_counter() - t0 > limits.max_seconds:
                break
    res.seconds = time.perf_counter() - t0
    return res


def plan_step(float_model: onnx.ModelProto, feeds: Sequence[Feed], ranges: Ranges, score: float, quantize: Quantize,
              evaluate: Evaluate, probe_feeds: int, seed: int, notes: list[str], steps: dict) -> tuple[Ranges, float]:
    """`search_ranges` as a step of `int8_plan.build_plan`: its note and record, then (ranges, score)."""
    res = search_ranges(float_model, feeds, ranges, score, quantize, evaluate, Limits(probe_feeds, seed=seed))
    notes.append(res.note())
    steps["range_search"] = {"before": res.before, "after": res.score, "changed": res.changed, "trials": res.trials,
                             "kept": bool(res.changed)}
    return res.ranges, res.score
