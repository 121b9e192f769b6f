"""Build the candidate models and check each one's fidelity against the original.

Candidates (all from the repaired model; the INT8 ones from its opset-13 upgrade where the source is older,
the others from the source opset):
  fp32-opt   ONNX Runtime basic offline optimisation + dead-node removal (FP32)
  w8         weight-only INT8 storage (int8 + Cast + Mul, folded back to FP32 at load: same speed)
  w16        weight-only FP16 storage (fp16 + Cast, folded at load)
  int8-qdq   static INT8 QDQ (u8s8, reduce_range) with SQNR fallback of sensitive layers
  int8-qdq+w8  int8-qdq plus weight-only storage of the float weights it left (RNNs, fallen-back layers)
  int8-qop   static INT8 QOperator (QLinearConv, ...) with the same fallback list
  int8-dyn   dynamic INT8 of MatMul/Gemm/LSTM/GRU (only when the model has them)
  fp16       full FP16 compute (inputs/outputs kept FP32)
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgeslim.measure.fidelity import Fidelity, Tolerance, compare, run_all
from edgeslim.onnxkit.graph import graphs, op_counts, save
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.quant import convert_fp16
from edgeslim.onnxkit.session import session
from edgeslim.onnxopt import fallback
from edgeslim.onnxopt.weight_only import weight_only

ALL = ("fp32-opt", "w8", "w16", "int8-qdq", "int8-qdq+w8", "int8-qop", "int8-dyn", "fp16")
ABOUT = {
    "original": "the input model, unchanged",
    "fp32-opt": "ORT offline graph optimisation (basic) + dead nodes removed",
    "w8": "weight-only INT8 storage (Cast+Mul, FP32 compute)",
    "w16": "weight-only FP16 storage (Cast, FP32 compute)",
    "int8-qdq": "static INT8 QDQ u8s8 reduce_range",
    "int8-qdq+w8": "int8-qdq + weight-only storage of the weights it left float",
    "int8-qop": "static INT8 QOperator u8s8 reduce_range",
    "int8-dyn": "dynamic INT8 (MatMul/Gemm/RNN)",
    "fp16": "FP16 compute, FP32 I/O",
}


@dataclass
class Candidate:
    name: str
    path: Path | None = None
    size: int = 0  # bytes on disk
    fid: Fidelity | None = None
    status: str = "ok"  # ok | chosen | rejected: ... | failed: ... | skipped: ...
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
class Context:
    """What every candidate builder needs."""

    repaired: onnx.ModelProto     # constants lifted, source opset (what FP32/FP16 candidates start from)
    base: onnx.ModelProto         # ORT-optimised, opset >= 13 where it could be upgraded, nodes named (INT8)
    feeds: list[Feed]
    ref: list                     # original outputs per feed
    out_names: list[str]
    tol: Tolerance
    exclude_ops: set[str]
    exclude_nodes: set[str]
    sqnr_db: float
    weight_min_elements: int
    workdir: Path
    excluded_by_sqnr: list[str] = field(default_factory=list)
    w8_fp16_below_db: float = 0.0  # set by `evaluate` while it searches the w8 fallback threshold
    w8_db: float = 0.0             # the threshold w8 ended with (reused by int8-qdq+w8)
    base_fp: onnx.ModelProto | None = None  # ORT-optimised at the source opset (None: same as base)

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


def _weights_of_excluded(m: onnx.ModelProto, ctx: Context) -> set[str]:
    inits = {t.name for t in m.graph.initializer}
    return {i for n in graphs(m.graph) for node in n.node
            if node.op_type in ctx.exclude_ops or node.name in ctx.exclude_nodes
            for i in node.input if i in inits}


def build(name: str, ctx: Context) -> tuple[onnx.ModelProto | None, list[str]]:
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
        r = fallback.static_with_fallback(ctx.base, ctx.feeds, ctx.exclude_ops, ctx.exclude_nodes, ctx.sqnr_db)
        ctx.excluded_by_sqnr = r.excluded
        q = len(fallback.quantized_nodes(r.model))
        if q == 0:
            return None, [NOTHING_QUANTIZED]
        ctx.qdq = r.model
        notes.append(f"{q} layers INT8, {len(r.excluded)} fell back (SQNR < {ctx.sqnr_db:g} dB), "
                     f"worst layer {r.worst_db:.1f} dB")
        return r.model, notes
    if name == "int8-qdq+w8":
        # the weights static INT8 left float (RNNs, fallen-back layers) stored as int8/fp16 on top
        if ctx.qdq is None:
            return None, ["needs int8-qdq, which did not produce a model"]
        m, n = weight_only(ctx.qdq, "int8", ctx.weight_min_elements, _weights_of_excluded(ctx.qdq, ctx),
                                 fp16_below_db=ctx.w8_db)
        if n == 0:
            return None, ["int8-qdq left no large float weight"]
        return m, [f"{n} float tensors left by int8-qdq stored as int8/fp16"]
    if name == "int8-qop":
        m = fallback.static_int8(ctx.base, ctx.feeds, "qoperator", ctx.exclude_ops,
                              ctx.exclude_nodes | set(ctx.excluded_by_sqnr))
        if _int8_ops(m) <= _int8_ops(ctx.base):
            return None, [NOTHING_QUANTIZED]
        return m, [f"{len(ctx.excluded_by_sqnr)} layers kept float (from int8-qdq's SQNR fallback)"]
    if name == "int8-dyn":
        m2 = fallback.dynamic_int8(ctx.base, ctx.exclude_ops, ctx.exclude_nodes)
        return m2, ([] if m2 is not None else ["no MatMul/Gemm/LSTM/GRU to quantize dynamically"])
    if name == "fp16":
        return convert_fp16(ctx.fp_base, ctx.exclude_ops), notes
    raise AssertionError(name)


# w8 tries all-int8 first, then keeps the weights with the worst int8 SQNR (under these dB) in fp16
W8_FP16_STEPS_DB = (0.0, 36.0, 40.0, 44.0)


def evaluate(name: str, ctx: Context, threads: int) -> Candidate:
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


def _evaluate(name: str, ctx: Context, threads: int) -> Candidate:
    c = Candidate(name)
    try:
        m, c.notes = build(name, ctx)
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
    try:
        sess = session(c.path, threads=threads)
        got = run_all(sess, ctx.feeds)
    except Exception as e:
        msg = re.sub(r"^.*?Load model from \S+ failed:", "", str(e).replace(f"{c.path}: ", ""))
        c.status = f"failed: ORT cannot run it ({_first_line(Exception(msg))})"
        return c
    c.fid = compare(ctx.out_names, ctx.ref, got)
    why = ctx.tol.broken(c.fid)
    if why:
        c.status = f"rejected: {why}"
    return c


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgeslim-optimize-")
