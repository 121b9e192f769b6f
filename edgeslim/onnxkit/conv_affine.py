"""Constant affine ops beside convolutions folded into them in the re-exported graph (issue 23).

A re-exported PP-LCNetV3 backbone (PP-OCRv4 rec) writes each "learnable affine block" as a Mul and an Add of
one-element constants, beside every conv: Conv -> Mul(s1) -> Add(t1) -> hard-swish -> Mul(s2) -> Add(t2) ->
Conv. ONNX Runtime folds none of them (its Conv+Mul fusion wants the constant second; the exporter puts it
first), so each runs as a full pass over a feature map. Two rules of `cheap_ops.cheapen_ops`:

- `conv_affine`: `bnfold.fold_affine`, the fold the INT8 plan already makes before quantizing (a per-channel
  Mul/Add/Sub/Div after a Conv it alone reads; a Mul before a Conv; an Add before a Conv without padding),
  now made on the FP32 re-export too. On PP-OCRv4 rec's FP32 stage: 81 ops, 405 -> 324 kernels per call.
- `affine_swap` (not in DEFAULT_RULES): Mul(x, s) -> Add(t) -> Conv *with* padding, where the Add cannot fold
  (the conv's zero padding is not shifted by t) and so keeps the Mul from reaching the conv: written as
  Add(x, t / s) -> Mul(s) -> Conv (s * x + t = s * (x + t / s); s one element or one per channel, none zero),
  and the Mul then folds into the conv's weights (exact with any padding: s * 0 = 0). One elementwise pass
  fewer per pair: on rec's INT8 stage file (an estimate: applied to the QDQ file) 13 pairs in front of its
  padded depthwise convs, 194 -> 181 kernels per call, 1.025x. Left out by default: applied before the INT8
  plan (rec rerun from stage 02, run E_rec) the plan's calibration moved (fully quantized cosine 0.9329 ->
  0.9260, one more float layer, fewer float layers stored int8) and the last stage came out 4.94 MB (2.20x
  smaller) where it was 3.30 MB (3.29x): the issue's ">= 3x smaller" lost for a few per cent of speed.

Both are exact up to float rounding. Measured with benchmarks/bench_cheap_ops.py (docs/benchmarks.md, the
issue 23 "affine folds" section).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers
from edgeslim.onnxkit.view_chains import is_main_node


def swap_affine(g: onnx.GraphProto, consts: Consts) -> int:
    """Rewrite, in place, Mul(x, s) -> Add(t) -> padded Conv as Add(x, t / s) -> Mul(s) -> Conv (module
    docstring); returns how many pairs. The caller folds the moved Muls (`bnfold.fold_affine`)."""
    outputs = {o.name for o in g.output}
    readers = consumers(g)
    prod = {o: n for n in g.node for o in n.output if o}
    done = 0
    for conv in list(g.node):
        if conv.op_type != "Conv" or not is_main_node(conv) or len(conv.input) < 2 or not _padded(conv):
            continue
        w = consts.get(conv.input[1])
        if w is None or w.dtype != np.float32 or w.ndim < 3:
            continue
        cin = w.shape[1] * int(attr(conv, "group", 1))
        add = prod.get(conv.input[0])
        if add is None or not _affine(add, "Add", outputs, consts) or readers.get(add.output[0], []) != [conv]:
            continue
        xa, tname = _split(add, consts)
        mul = prod.get(xa)
        if mul is None or not _affine(mul, "Mul", outputs, consts) or len(readers.get(xa, [])) != 1:
            continue
        x, sname = _split(mul, consts)
        s = _per_channel(consts.get(sname), cin, w.ndim)
        t = _per_channel(consts.get(tname), cin, w.ndim)
        if s is None or t is None or not np.all(s != 0):
            continue
        ts = (t / s).astype(np.float32)  # [C]
        tsn = unique_name(g, f"{add.output[0]}_t_over_s")
        shape = [1] * w.ndim
        shape[1] = -1  # one value per channel, on axis 1; one element where all are equal
        g.initializer.append(numpy_helper.from_array(ts[:1] if np.all(ts == ts[0]) else ts.reshape(shape), tsn))
        moved = unique_name(g, f"{add.output[0]}_shifted")
        add.input[:] = [x, tsn]
        add.output[0], mul.output[0] = moved, add.output[0]  # Add first, then Mul writes what the conv reads
        mul.input[:] = [moved, sname]
        g.node.remove(mul)
        g.node.insert(list(g.node).index(add) + 1, mul)
        done += 1
    return done


def _padded(conv: onnx.NodeProto) -> bool:
    ap = attr(conv, "auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else str(ap)
    return ap not in ("NOTSET", "VALID") or any(int(p) for p in attr(conv, "pads", []))


def _split(n: onnx.NodeProto, consts: Consts) -> tuple[str, str]:
    """(tensor input, constant input) of a binary node with exactly one constant input."""
    a, b = n.input
    return (b, a) if a in consts else (a, b)


def _affine(n: onnx.NodeProto, op: str, outputs: set[str], consts: Consts) -> bool:
    """`n` is a main-graph `op` of one tensor and one float32 constant, whose output is no graph output."""
    if n.op_type != op or not is_main_node(n) or len(n.input) != 2 or len(n.output) != 1 or n.output[0] in outputs:
        return False
    if sum(i in consts for i in n.input) != 1:
        return False
    v = consts.get(_split(n, consts)[1])
    return v is not None and v.dtype == np.float32


def _per_channel(c: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """`c` as a [channels] float64 vector when it is one element or broadcasts along axis 1 of a rank-`rank`
    tensor only; else None."""
    if c is None:
        return None
    if c.size == 1:
        return np.full(channels, float(c.reshape(-1)[0]), np.float64)
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if len(shape) != rank or shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return c.reshape(-1).astype(np.float64)
