"""Build the candidate models and check each one's fidelity against the original.

Candidates (all from the repaired model; the INT8 ones from its opset-13 upgrade where the source is older,
the others from the source opset):
  fp32-opt   ONNX Runtime basic offline optimisation, BatchNorm/affine folding, hard-swish fusion (FP32)
  w8         weight-only INT8 storage (int8 + Cast + Mul, folded back to FP32 at load: same speed)
  w16        weight-only FP16 storage (fp16 + Cast, folded at load)
  int8-qdq   static INT8 QDQ by `quant.int8_plan`: per-tensor ranges, AdaRound, bias correction, the
             integer format that runs fastest here, layers kept float by output sensitivity and by speed
  int8-qdq+w8  int8-qdq plus weight-only storage of the float weights it left (RNNs, ...)
  int8-qop   the same plan in QOperator format (QLinearConv, ...), float layers' weights stored int8
  int8-dyn   dynamic INT8 of MatMul/Gemm/LSTM/GRU (only when the model has them)
  fp16       full FP16 compute (inputs/outputs kept FP32); only where the CPU runs FP16 natively
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgeslim.measure.core import Measurer
from edgeslim.measure.fidelity import Fidelity, Tolerance, compare_outputs
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import graphs, op_counts, save
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.quant import convert_fp16
from edgeslim.onnxkit.session import iter_outputs, session
from edgeslim.onnxkit.weight_only import weight_only
from edgeslim.onnxopt import fallback
from edgeslim.quant import int8_plan

ALL = ("fp32-opt", "w8", "w16", "int8-qdq", "int8-qdq+w8", "int8-qop", "int8-dyn", "fp16")
# int8-qdq's plan with some of its choices undone: measured for the ablation table, never chosen
ABLATION = ("int8-full", "int8-no-speed-choice", "int8-no-fidelity-fallback")
ABOUT = {
    "original": "the input model, unchanged",
    "fp32-opt": "ORT basic optimisation, folds, fused activations, dead nodes removed",
    "w8": "weight-only INT8 storage (Cast+Mul, FP32 compute)",
    "w16": "weight-only FP16 storage (Cast, FP32 compute)",
    "int8-qdq": "static INT8 QDQ, per-layer INT8/float choice",
    "int8-qdq+w8": "int8-qdq + weight-only storage of the weights it left float",
    "int8-qop": "int8-qdq's plan in QOperator format",
    "int8-dyn": "dynamic INT8 (MatMul/Gemm/RNN)",
    "fp16": "FP16 compute, FP32 I/O",
    "int8-full": "ablation: int8-qdq with every layer INT8",
    "int8-no-speed-choice": "ablation: int8-qdq without the per-layer speed choice",
    "int8-no-fidelity-fallback": "ablation: int8-qdq without the fidelity fallback",
}


@dataclass
class GraphCandidate:
    name: str
    path: Path | None = None
    size: int = 0  # bytes on disk
    fid: Fidelity | None = None
    status: str = "ok"  # ok | chosen | rejected: ... | failed: ... | skipped: ...
    why: str = ""       # why it won or lost the choice (measure.decide), for usable candidates
    ablation: bool = False  # measured for comparison only, never chosen
    notes: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        assert self.path is not None, f"{self.name} was not built"
        return self.path

    @property
    def usable(self) -> bool:
        return self.status in ("ok", "chosen")


@dataclass
class CandidateContext:
    """What every candidate builder needs."""

    repaired: onnx.ModelProto     # constants lifted, source opset (what FP32/FP16 candidates start from)
    base: onnx.ModelProto         # ORT-optimised, opset >= 13 where it could be upgraded, nodes named (INT8)
    feeds: Sequence[Feed]
    ref: Sequence                 # original outputs per feed (a list, or an onnxkit.lazy.Spill on disk)
    out_names: list[str]
    tol: Tolerance
    exclude_ops: set[str]
    exclude_nodes: set[str]
    sqnr_db: float
    weight_min_elements: int
    workdir: Path
    excluded_by_sqnr: list[str] = field(default_factory=list)
    w8_fp16_below_db: float = 0.0  # set by `evaluate_candidate` while it searches the w8 fallback threshold
    w8_db: float = 0.0             # the threshold w8 ended with (reused by int8-qdq+w8)
    base_fp: onnx.ModelProto | None = None  # ORT-optimised at the source opset (None: same as base)
    int8: int8_plan.Int8Options = field(default_factory=int8_plan.Int8Options)
    plan: int8_plan.Int8Plan | None = None
    clock: int8_plan.Clock | None = None    # injected by tests; None: the measurement core's clock on feeds[0]
    # held-out feeds (never calibrated on) and the original's outputs on them: every candidate's fidelity and
    # the tolerance gate use these; empty: `feeds` / `ref` (tests that build a CandidateContext by hand)
    check_feeds: Sequence[Feed] = field(default_factory=list)
    check_ref: Sequence = field(default_factory=list)

    @property
    def fp_base(self) -> onnx.ModelProto:
        """Start of the FP32/FP16 candidates: no opset upgrade, which only per-channel INT8 needs."""
        return self.base_fp if self.base_fp is not None else self.base
    qdq: onnx.ModelProto | None = None


NOTHING_QUANTIZED = ("the quantizer converted no layer (already quantized, or every layer sits in an If/Loop "
                     "body, which ORT leaves float)")


def _int8_ops(m: onnx.ModelProto) -> int:
    return sum(n.op_type.startswith("QLinear") or n.op_type.endswith("Integer") for n in m.graph.node)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:160]


def _weights_of_excluded(m: onnx.ModelProto, ctx: CandidateContext) -> set[str]:
    inits = {t.name for t in m.graph.initializer}
    return {i for n in graphs(m.graph) for node in n.node
            if node.op_type in ctx.exclude_ops or node.name in ctx.exclude_nodes
            for i in node.input if i in inits}


def build_candidate(name: str, ctx: CandidateContext) -> tuple[onnx.ModelProto | None, list[str]]:
    """(model, notes) for candidate `name`; (None, [reason]) when it does not apply."""
    notes: list[str] = []
    if name == "fp32-opt":
        return ctx.fp_base, notes
    if name in ("w8", "w16"):
        # weight-only storage on whichever FP32 graph is smaller: ORT's constant folding can copy weights
        # into several If branches, and the session folds the decode chain at load time either way
        # (the optimised graph is preferred: its Conv+BN etc. are already fused, which ORT cannot redo at
        # load time on a weight that is still a Cast/Mul chain)
        fp = ctx.fp_base
        src = fp if fp.ByteSize() <= 1.02 * ctx.repaired.ByteSize() else ctx.repaired
        m, n = weight_only(src, "int8" if name == "w8" else "fp16", ctx.weight_min_elements,
                                 _weights_of_excluded(src, ctx), fp16_below_db=ctx.w8_fp16_below_db)
        if n == 0:
            return None, [f"no weight has >= {ctx.weight_min_elements} elements"]
        n16 = sum(t.name.endswith("__fp16") for g in graphs(m.graph) for t in g.initializer)
        if name == "w8":
            why = f" (incl. weights with int8 SQNR < {ctx.w8_fp16_below_db:g} dB)" if ctx.w8_fp16_below_db else ""
            return m, [f"{n - n16} tensors int8, {n16} fp16{why}"]
        return m, [f"{n} tensors fp16"]
    if name == "int8-qdq":
        clock = ctx.clock or Measurer(ctx.int8.threads).clock(ctx.feeds[0])
        plan = int8_plan.build_plan(ctx.base, ctx.feeds, ctx.ref, ctx.int8, clock)
        if ctx.sqnr_db > 0:
            plan = _sqnr_floor(plan, ctx)
        ctx.plan = plan
        if not plan.int8_units:
            return None, [f"no layer stays INT8 ({len(plan.float_units)} kept float: "
                          + _why_counts(plan.float_units) + "); this is w8's model"]
        notes.append(f"{plan.fmt}: {len(plan.int8_units)} layers INT8, {len(plan.float_units)} float ("
                     + _why_counts(plan.float_units) + ")" if plan.float_units else
                     f"{plan.fmt}: all {len(plan.int8_units)} layers INT8")
        return plan.model, notes + plan.notes
    if name == "int8-qdq+w8":
        # the weights static INT8 left float (RNNs, ...) stored as int8/fp16 on top
        if ctx.plan is None or not ctx.plan.int8_units:
            return None, ["needs int8-qdq, which did not produce a model"]
        m, n = weight_only(ctx.plan.model, "int8", ctx.weight_min_elements, _weights_of_excluded(ctx.plan.model, ctx),
                           fp16_below_db=ctx.w8_db)
        if n == 0:
            return None, ["int8-qdq left no large float weight"]
        return m, [f"{n} float tensors left by int8-qdq stored as int8/fp16"]
    if name == "int8-qop":
        if ctx.plan is None or not ctx.plan.int8_units:
            return None, ["needs int8-qdq's plan, which did not produce a model"]
        p = ctx.plan
        assert p.quantized_from is not None
        m = oq.quantize_static_model(p.quantized_from, ctx.feeds, oq.parse_format(p.fmt), oq.StaticQuant(
            qdq=False, op_types=int8_plan.op_types(ctx.int8), ranges=p.ranges,
            exclude_nodes=sorted(p.float_nodes | set(ctx.exclude_nodes))))
        if _int8_ops(m) <= _int8_ops(ctx.base):
            return None, [NOTHING_QUANTIZED]
        m, k = weight_only(m, "int8", ctx.weight_min_elements, _weights_of_excluded(m, ctx) | p.exact_weights(m))
        return m, [f"{p.fmt}, the same {len(p.float_units)} layers float; {k} float weights stored int8"]
    if name in ABLATION:
        if ctx.plan is None or ctx.plan.full is None:
            return None, ["needs int8-qdq's plan"]
        p = ctx.plan
        variants = {"int8-full": p.full, "int8-no-speed-choice": p.variant(speed=False),
                    "int8-no-fidelity-fallback": p.variant(fidelity=False)}
        return variants[name], []
    if name == "int8-dyn":
        m2 = fallback.dynamic_int8(ctx.base, ctx.exclude_ops, ctx.exclude_nodes)
        return m2, ([] if m2 is not None else ["no MatMul/Gemm/LSTM/GRU to quantize dynamically"])
    if name == "fp16":
        emulated = fp16_native()
        if emulated is not None:
            return None, [emulated]
        return convert_fp16(ctx.fp_base, ctx.exclude_ops), notes
    raise AssertionError(name)


def _why_counts(float_units: dict[str, str]) -> str:
    kinds = [w.split(":")[0].split(" (")[0] for w in float_units.values()]
    return ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))


def _sqnr_floor(plan: int8_plan.Int8Plan, ctx: CandidateContext) -> int8_plan.Int8Plan:
    """`--sqnr-db`: also keep float (original weights) every INT8 layer whose output SQNR is under it."""
    s = fallback.onnx_layer_sqnr(plan.float_model, plan.model, ctx.feeds[:8])
    low = {n for n, db in s.items() if db < ctx.sqnr_db}
    hit = [u for u in plan.int8_units if set(plan.units.quant[u]) & low]
    if not hit:
        return plan
    return int8_plan.refloat(plan, {u: f"fidelity: output SQNR under --sqnr-db {ctx.sqnr_db:g}" for u in hit},
                             ctx.feeds, ctx.ref)


def fp16_native() -> str | None:
    """None when ONNX Runtime runs FP16 compute natively on this CPU, else why the fp16 candidate is skipped.

    ORT's CPU provider has its half-precision kernels (MLAS FP16 GEMM/conv) for ARM64 CPUs with FP16
    arithmetic (asimdhp). On x86_64 an FP16 graph gains nothing: measured on an x86 host whose CPU
    reports avx512_fp16, PP-OCR cls and det FP16 graphs ran at FP32 speed (time ratio 0.98, CI reaching
    above 1; docs/benchmarks.md) while losing precision, and w16 gives the same file size. Set
    EDGESLIM_FP16=1 to try the candidate anyway."""
    import os
    import platform

    if os.environ.get("EDGESLIM_FP16") == "1":
        return None
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            flags = ""
        if "asimdhp" in flags or "fphp" in flags or platform.system() == "Darwin":
            return None
        return "this ARM CPU reports no FP16 arithmetic (asimdhp): FP16 compute would be emulated"
    return (f"FP16 compute is not native in ONNX Runtime's CPU provider on {machine} (FP16 graphs measured at FP32 "
            "speed at best, with less precision); w16 stores weights in fp16 instead (EDGESLIM_FP16=1 tries it)")


# w8 tries all-int8 first, then keeps the weights with the worst int8 SQNR (under these dB) in fp16
W8_FP16_STEPS_DB = (0.0, 36.0, 40.0, 44.0)


def evaluate_candidate(name: str, ctx: CandidateContext, threads: int) -> GraphCandidate:
    """Build, save, load in ORT and compare outputs; never raises (a failure is the candidate's status)."""
    if name != "w8":
        return _evaluate(name, ctx, threads)
    trail: list[str] = []
    for db in W8_FP16_STEPS_DB:
        ctx.w8_fp16_below_db = db
        c = _evaluate(name, ctx, threads)
        if not c.status.startswith("rejected"):
            break
        trail.append(f"fp16 below {db:g} dB: {c.status.partition(': ')[2]}")
    if trail and not c.status.startswith("rejected"):
        c.notes.append("earlier tries " + ", ".join(trail))
    ctx.w8_db, ctx.w8_fp16_below_db = ctx.w8_fp16_below_db, 0.0
    return c


def _evaluate(name: str, ctx: CandidateContext, threads: int) -> GraphCandidate:
    c = GraphCandidate(name, ablation=name in ABLATION)
    try:
        m, c.notes = build_candidate(name, ctx)
    except Exception as e:  # the tooling can fail on odd graphs: that candidate is out, the others go on
        c.status = f"failed: {_first_line(e)}"
        if os.environ.get("EDGESLIM_DEBUG"):
            traceback.print_exc()
        return c
    if m is None:
        c.status = f"skipped: {c.notes[0] if c.notes else 'not applicable'}"
        return c
    c.path = ctx.workdir / f"{name}.onnx"
    c.size = save(m, c.path)
    c.ops = op_counts(m)
    try:  # outputs compared feed by feed as they come (memory: one feed's outputs)
        sess = session(c.path, threads=threads)
        got = iter_outputs(sess, ctx.check_feeds or ctx.feeds)
        c.fid = compare_outputs(ctx.out_names, ctx.check_ref or ctx.ref, got)
    except AssertionError:  # an output changed size: our bug, not the candidate's
        raise
    except Exception as e:
        msg = re.sub(r"^.*?Load model from \S+ failed:", "", str(e).replace(f"{c.path}: ", ""))
        c.status = f"failed: ORT cannot run it ({_first_line(Exception(msg))})"
        return c
    why = ctx.tol.broken(c.fid)
    if why:
        c.status = f"rejected: {why}"
    return c


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgeslim-optimize-")
