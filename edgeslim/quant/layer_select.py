"""Which layers of a static INT8 model stay float: for fidelity (output sensitivity) and for speed (timing).

Units: a layer is a weight node (Conv, ConvTranspose, MatMul, Gemm) with the element-wise nodes after it
(activation, residual Add, ...) up to the next weight node; a quantized node with no weight node before
it starts its own unit. A unit is INT8 or float as a whole, so "keep a layer float" is one decision.

Fidelity (`fidelity_fallback`): the output sensitivity of a unit is how far the model's outputs move
(1 - cosine, worst output) when that unit alone is quantized and everything else runs float. Units are
put back to float, most sensitive first, until the whole model meets the target: the smallest such
number is found by bisection on the ranked list, each step judged on the real outputs, so the rule is
"keep float exactly the layers whose removal restores fidelity", not a fixed per-layer SQNR threshold.

Speed (`speed_fallback`): ONNX Runtime's per-kernel profile of the float model and of the current mixed
model, run alternately on this CPU, gives each unit's FP32 and INT8 time; the INT8 time includes the
quantize/dequantize nodes at the unit's edges that exist because its neighbours are float. Units whose
INT8 time exceeds their FP32 time keep float compute (their weights stay int8 on disk), and the profile
is taken again, because a unit turned float changes its neighbours' edges. Whole-model timing still has
the last word on the result (`measure.decide`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from edgeslim.onnxkit.graph import QDQ_OPS
from edgeslim.quant.profile import attribute
from edgeslim.quant.qdq_float import keep_float, quantized_nodes
from edgeslim.quant.stream_eval import Evaluate

# Layers kept float for speed keep their int8 codes on disk (Cast -> Mul, folded by ORT at load) from this
# many weight elements: with the old 1024 the stem (144) and classifier (640) of ResNet-8 were stored
# float32 and the file went from 3.78x to 3.46x smaller than FP32 (issue 27)
WEIGHT_CODES_MIN = 16

WEIGHT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU"}


@dataclass
class Units:
    """Layer units of a QDQ model: unit name -> node names (quantized ones in `quant`)."""

    members: dict[str, list[str]] = field(default_factory=dict)
    quant: dict[str, list[str]] = field(default_factory=dict)
    op: dict[str, str] = field(default_factory=dict)  # unit -> op type of its first node

    def nodes(self, units) -> set[str]:
        return {n for u in units for n in self.quant[u]}

    def unit_of(self) -> dict[str, str]:
        return {n: u for u, ns in self.members.items() for n in ns}


def units(qdq: onnx.ModelProto) -> Units:
    """Group the nodes of `qdq` into units (module docstring), in graph order."""
    g = qdq.graph
    prod = {o: n for n in g.node for o in n.output if o}
    qn = {n.name for n in quantized_nodes(qdq)}
    out = Units()
    of: dict[str, str] = {}

    def source(t: str) -> str | None:
        """The compute node behind tensor t, looking through Q/DQ pairs."""
        p = prod.get(t)
        while p is not None and p.op_type in QDQ_OPS:
            p = prod.get(p.input[0])
        return p.name if p is not None else None

    for n in g.node:
        if n.op_type in QDQ_OPS or n.op_type == "Constant":
            continue
        ups = [of[s] for s in (source(i) for i in n.input if i) if s is not None and s in of]
        if n.op_type in WEIGHT_OPS and n.name in qn or not ups:
            if n.name not in qn and not ups:
                continue  # float node outside any unit (shape arithmetic, ...)
            u = n.name
            out.members[u], out.quant[u], out.op[u] = [], [], n.op_type
        else:
            u = ups[0]
        of[n.name] = u
        out.members[u].append(n.name)
        if n.name in qn:
            out.quant[u].append(n.name)
    for u in [u for u, q in out.quant.items() if not q]:  # units with nothing quantized
        del out.members[u], out.quant[u], out.op[u]
    return out


@dataclass
class Fallback:
    float_units: list[str]                  # kept float for fidelity, most sensitive first
    sensitivity: dict[str, float]           # unit -> 1 - cosine when only it is quantized
    trail: list[tuple[int, float]]          # (units kept float, worst cosine) tried by the bisection
    met: bool                               # the target was reached


def fidelity_fallback(qdq: onnx.ModelProto, float_model: onnx.ModelProto, us: Units, evaluate: Evaluate,
                      target: float, probe_feeds: int = 4, full_feeds: int = 1 << 30) -> Fallback:
    """Units to keep float (with their original weights) so that `evaluate` >= `target` (module doc)."""
    all_nodes = us.nodes(us.quant)

    def variant(float_units: list[str], quantized: list[str] | None = None) -> onnx.ModelProto:
        if quantized is not None:
            fl = all_nodes - us.nodes(quantized)
        else:
            fl = us.nodes(float_units)
        return keep_float(qdq, fl, exact=fl, float_model=float_model)

    trail: list[tuple[int, float]] = []
    full = evaluate(qdq, full_feeds)
    trail.append((0, full))
    if full >= target:
        return Fallback([], {}, trail, True)
    sens = {u: 1.0 - evaluate(variant([], [u]), probe_feeds) for u in us.quant}
    order = sorted(us.quant, key=lambda u: (-sens[u], u))
    lo, hi = 0, len(order)  # invariant: lo fails; hi passes (checked below when it is "all float")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = evaluate(variant(order[:mid]), full_feeds)
        trail.append((mid, c))
        if c >= target:
            hi = mid
        else:
            lo = mid
    met = True
    if hi == len(order):
        c = evaluate(variant(order), full_feeds)
        trail.append((hi, c))
        met = c >= target
    return Fallback(order[:hi], sens, trail, met)


@dataclass
class UnitTime:
    fp32_us: float
    int8_us: float  # incl. the quantize/dequantize nodes charged to it


@dataclass
class SpeedChoice:
    slow_units: list[str]                           # kept float because their INT8 time was higher
    times: dict[str, UnitTime]                      # last profile of every unit that was INT8 in it
    rounds: int
    unattributed_us: tuple[float, float] = (0.0, 0.0)  # (float model, mixed model) layout/other time
    decided: dict[str, UnitTime] = field(default_factory=dict)  # the times a slow unit was judged by


Profiler = Callable[[dict[str, bytes]], dict[str, dict[str, float]]]


def speed_fallback(qdq: onnx.ModelProto, float_model: onnx.ModelProto, us: Units, fixed: list[str],
                   profiler: Profiler, margin: float = 0.05, max_rounds: int = 3) -> SpeedChoice:
    """Units (besides `fixed`, already float) whose INT8 kernels are slower than FP32 here (module doc)."""
    slow: list[str] = []
    times: dict[str, UnitTime] = {}
    decided: dict[str, UnitTime] = {}
    other = (0.0, 0.0)
    rounds = 0
    float_bytes = float_model.SerializeToString()
    while rounds < max_rounds:
        rounds += 1
        fl = set(fixed) | set(slow)
        cur = keep_float(qdq, us.nodes(fl), exact=us.nodes(fixed), float_model=float_model,
                         int8_min_elements=WEIGHT_CODES_MIN)
        prof = profiler({"fp32": float_bytes, "int8": cur.SerializeToString()})
        fa, of = attribute(prof["fp32"], float_model)
        qa, oq = attribute(prof["int8"], cur)
        other = (of, oq)
        times = unit_times(cur, us, fa, qa, skip=fl)
        new = [u for u, t in times.items() if t.int8_us > t.fp32_us * (1 + margin) + 1.0]
        if not new:
            break
        decided.update({u: times[u] for u in new})
        slow += sorted(new, key=lambda u: list(us.quant).index(u))
    return SpeedChoice(slow, times, rounds, other, decided)


def unit_times(model: onnx.ModelProto, us: Units, fp32: dict[str, float], int8: dict[str, float],
               skip: set[str]) -> dict[str, UnitTime]:
    """Per INT8 unit of `model` (a QDQ model derived from the units' model): FP32 and INT8 time (us).
    Each quantize/dequantize node left in `model` is charged to the INT8 unit next to it."""
    of = us.unit_of()
    g = model.graph
    prod = {o: n for n in g.node for o in n.output if o}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out = {u: UnitTime(0.0, 0.0) for u in us.quant if u not in skip}
    for n, t in fp32.items():
        u = of.get(n)
        if u in out:
            out[u].fp32_us += t
    for n in g.node:
        t = int8.get(n.name, 0.0)
        if not t:
            continue
        u = of.get(n.name)
        if n.op_type in QDQ_OPS:
            u = _qdq_owner(n, prod, cons, of, out)
        if u in out:
            out[u].int8_us += t
    return out


def _qdq_owner(n: onnx.NodeProto, prod: dict, cons: dict, of: dict[str, str], int8_units: dict) -> str | None:
    """The INT8 unit a leftover Q or DQ node serves: Q(T) serves the INT8 readers of its DQ; DQ serves the
    INT8 producer of the quantized tensor (its readers are float), else its first INT8 reader."""
    if n.op_type == "QuantizeLinear":
        for dq in cons.get(n.output[0], []):
            for r in cons.get(dq.output[0], []):
                if of.get(r.name) in int8_units:
                    return of[r.name]
        p = prod.get(n.input[0])
        return of.get(p.name) if p is not None else None
    q = prod.get(n.input[0])
    if q is not None and q.op_type == "QuantizeLinear":
        p = prod.get(q.input[0])
        if p is not None and of.get(p.name) in int8_units:
            return of[p.name]
    for r in cons.get(n.output[0], []):
        if of.get(r.name) in int8_units:
            return of[r.name]
    return None
