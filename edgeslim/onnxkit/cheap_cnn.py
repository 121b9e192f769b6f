"""Ops of a re-exported 2-D CNN rewritten as fewer or cheaper ONNX Runtime kernels (issue 23).

A small mobile CNN (PP-OCR's direction classifier: 48x192 input, about 0.6 ms a call in ONNX Runtime, one
thread) spends much of a call in per-kernel overhead and in NCHWc layout conversions (ReorderInput /
ReorderOutput) around ops ONNX Runtime's NCHWc transformer does not take. `cheap_cnn` rewrites, in the main
graph only, where the pattern is met exactly:

- `hardswish` (in DEFAULT_RULES): x * Clip(x + 3, 0, 6) / 6 (or * 1/6; constants perhaps behind Identity
  copies), the hard-swish a traced export writes out, -> one HardSwish (opset >= 14). ONNX Runtime fuses a
  HardSwish into the NCHWc Conv before it; the written-out form runs four elementwise kernels on NCHW data, the
  conv's output reordered out of NCHWc and back in. PP-OCR cls's FP32 re-export (stage 02): 235 -> 145 kernels
  per call, 817 -> 591 us (1.38x; 1.47x in a second run beside a busy core); PP-OCRv4 det's: 395 -> 347
  kernels, 1.04x (1.07x with the other default rules). The INT8-stored last stages are unchanged: the quantize
  stage's offline ONNX Runtime pass had already fused the hard-swish there.
- `se_gemm` (not in DEFAULT_RULES): a 1x1 Conv (group 1, no padding, constant weight and bias) on a
  [N, C, 1, 1] tensor, the squeeze and excitation convs after a GlobalAveragePool, -> Flatten + Gemm (transB) +
  Reshape [N, Co, 1, 1]; a Reshape -> one elementwise op -> Flatten between two such Gemms is cancelled. Left
  out: no faster on cls (stage 02 0.993x, stage 03 1.007x), slower on det (stage 02 0.948x, stage 03 0.999x):
  the NCHWc reorders of those tiny tensors cost next to nothing; it adds kernels (145 -> 155 on cls).

Measured with benchmarks/bench_cheap_ops.py (interleaved, ONNX Runtime 1.32, one thread, AVX-512: NCHWc block
16; the issue's section of docs/benchmarks.md). Probed and not kept (benchmarks/bench_cnn_probes.py, cls's last
stage, one interleaved loop): the SE scale folded into the 1x1 conv after it (W * s as a per-call weight, MatMul
on [N, C, H W] rows) 1.017x, no better than the static-shape file it needs (1.017x: ONNX Runtime then fuses the
residual Adds into the NCHWc convs, 145 -> 117 kernels, but the file would take one image size only). Dropping
the SE scale altogether (an upper bound, not a rewrite) gives 1.34x: the full-size ReorderOutput/ReorderInput
around the broadcast Mul, which ONNX Runtime's NCHWc transformer does not take (its TransformBinary needs equal
shapes; only Add/Sum get the reshaped fallback).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers, insert_before, rename_reads
from edgeslim.onnxkit.static_shapes import Dim

UNARY = {"Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Clip", "Elu"}  # elementwise, one input


def _opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version (0 when absent)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _near(v: float | None, want: float, tol: float = 1e-6) -> bool:
    return v is not None and abs(v - want) <= tol * max(1.0, abs(want))


def _scalar(consts: Consts, prod: dict[str, onnx.NodeProto], name: str) -> float | None:
    """The value of one-element constant `name`, followed through Identity nodes (a re-export shares a constant
    between layers as Identity copies of it); else None."""
    for _ in range(8):
        v = consts.scalar(name)
        p = prod.get(name)
        if v is not None or p is None or p.op_type != "Identity" or len(p.input) != 1:
            return v
        name = p.input[0]
    return None


def _clip_bounds(n: onnx.NodeProto, consts: Consts,
                 prod: dict[str, onnx.NodeProto]) -> tuple[float | None, float | None]:
    """(min, max) of a Clip node: its attributes (opset < 11) or its constant inputs; None where absent or not
    constant."""
    if len(n.input) == 1 and (attr(n, "min", None) is not None or attr(n, "max", None) is not None):
        lo, hi = attr(n, "min", None), attr(n, "max", None)
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))
    lo = _scalar(consts, prod, n.input[1]) if len(n.input) > 1 and n.input[1] else None
    hi = _scalar(consts, prod, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    return lo, hi


def hardswish(model: onnx.ModelProto, consts: Consts) -> int:
    """Fuse, in place, x * Clip(x + 3, 0, 6) / 6 (Mul by 1/6 too; the Mul's inputs in either order) into one
    HardSwish writing the last node's output. Needs opset >= 14; the Add and Clip outputs read once."""
    g = model.graph
    if _opset(model) < 14:
        return 0
    prod = {o: n for n in g.node for o in n.output if o}
    readers = consumers(g)
    outputs = {o.name for o in g.output}
    done = 0
    for last in list(g.node):
        if last.op_type not in ("Div", "Mul") or last.domain not in ("", "ai.onnx") or len(last.input) != 2:
            continue
        k = _scalar(consts, prod, last.input[1])
        if not (_near(k, 6.0) if last.op_type == "Div" else _near(k, 1.0 / 6.0)):
            continue
        mul = prod.get(last.input[0])
        if mul is None or mul.op_type != "Mul" or len(mul.input) != 2 or len(readers.get(mul.output[0], [])) != 1:
            continue
        for ci in (0, 1):
            clip = prod.get(mul.input[ci])
            x = mul.input[1 - ci]
            if clip is None or clip.op_type != "Clip" or len(readers.get(clip.output[0], [])) != 1:
                continue
            lo, hi = _clip_bounds(clip, consts, prod)
            add = prod.get(clip.input[0])
            if not (_near(lo, 0.0) and _near(hi, 6.0)) or add is None or add.op_type != "Add":
                continue
            if len(readers.get(add.output[0], [])) != 1 or add.output[0] in outputs or clip.output[0] in outputs:
                continue
            pair = list(add.input)
            if len(pair) != 2 or x not in pair or not _near(_scalar(consts, prod, pair[1 - pair.index(x)]), 3.0):
                continue
            last.op_type, last.domain = "HardSwish", ""
            last.input[:] = [x]
            del last.attribute[:]
            done += 1
            break
    return done


def _is_pointwise_on_vector(n: onnx.NodeProto, dims: dict[str, list[Dim]], consts: Consts) -> bool:
    """A 1x1 Conv, group 1, no padding, constant float weight (and bias) whose input is [N, C, 1, 1]."""
    if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or len(n.output) != 1 or len(n.input) < 2:
        return False
    w = consts.get(n.input[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.dtype != np.float32:
        return False
    if len(n.input) > 2 and n.input[2] and consts.get(n.input[2]) is None:
        return False
    if int(attr(n, "group", 1)) != 1 or any(int(p) for p in attr(n, "pads", [0, 0, 0, 0])):
        return False
    if attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return False
    d = dims.get(n.input[0])
    return d is not None and len(d) == 4 and d[1] == w.shape[1] and d[2] == 1 and d[3] == 1


def se_gemm(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    """Rewrite, in place, 1x1 Convs on [N, C, 1, 1] tensors as Flatten -> Gemm -> Reshape [N, Co, 1, 1] (the
    Reshape writes the Conv's output name), then cancel Reshape -> one UNARY op -> Flatten between them."""
    before: dict[int, list[onnx.NodeProto]] = {}
    done = 0
    nodes: list[onnx.NodeProto] = list(g.node)  # held: insert_before finds them by id()
    for n in nodes:
        if not _is_pointwise_on_vector(n, dims, consts):
            continue
        w = consts.get(n.input[1])
        assert w is not None
        co, c = w.shape[:2]
        y = n.output[0]
        nm = {t: unique_name(g, f"{y}_{t}") for t in ("flat", "w", "b", "gemm", "shape")}
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.reshape(co, c)), nm["w"]))
        ins = [nm["flat"], nm["w"]]
        if len(n.input) > 2 and n.input[2]:
            b = consts.get(n.input[2])
            assert b is not None
            g.initializer.append(numpy_helper.from_array(b.reshape(co).astype(np.float32), nm["b"]))
            ins.append(nm["b"])
        g.initializer.append(numpy_helper.from_array(np.array([0, co, 1, 1], np.int64), nm["shape"]))
        before[id(n)] = [helper.make_node("Flatten", [n.input[0]], [nm["flat"]], axis=1),  # [N, C]
                         helper.make_node("Gemm", ins, [nm["gemm"]], transB=1)]  # [N, Co]
        n.op_type, n.domain = "Reshape", ""  # [N, Co, 1, 1]: the conv's output, same name
        del n.attribute[:]
        n.input[:] = [nm["gemm"], nm["shape"]]
        done += 1
    if before:
        insert_before(g, before)
        _cancel_reshapes(g)
    return done


def _cancel_reshapes(g: onnx.GraphProto) -> int:
    """Reshape(r [N, C] -> [N, C, 1, 1]) -> one UNARY op -> Flatten(axis 1) with the tensors between read once
    and no graph output: the op reads r and the Flatten's readers read the op. Returns how many."""
    outputs = {o.name for o in g.output}
    prod = {o: n for n in g.node for o in n.output if o}
    readers = consumers(g)
    done = 0
    for f in list(g.node):
        if f.op_type != "Flatten" or int(attr(f, "axis", 1)) != 1 or f.output[0] in outputs:
            continue
        u = prod.get(f.input[0])
        if u is None or u.op_type not in UNARY or len(u.output) != 1 or u.output[0] in outputs:
            continue
        r = prod.get(u.input[0])
        if r is None or r.op_type != "Reshape" or r.output[0] in outputs or prod.get(r.input[0]) is None \
                or prod[r.input[0]].op_type != "Gemm":
            continue
        if len(readers.get(u.output[0], [])) != 1 or len(readers.get(r.output[0], [])) != 1:
            continue
        u.input[0] = r.input[0]
        rename_reads(g, {f.output[0]: u.output[0]})
        done += 1
    return done
