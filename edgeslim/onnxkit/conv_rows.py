"""A 1-D convolution with few output positions computed as one MatMul over rows of its input (issue 23).

ONNX Runtime runs a 1-D Conv as im2col + GEMM with the weight as the left operand, which it does not prepack:
on a silero VAD encoder layer (129 -> 128 channels, 3 taps, padding 1, 4 positions) a Conv + Relu took 22.2 us
a call, where the same layer on channels-last rows, Pad + Gather + Reshape + MatMul (prepacked constant right
operand) + Add + Relu, took 11.1 us (interleaved timing, ORT 1.32, one thread). `conv_rows` rewrites such a Conv
(group 1, constant weight [Co, C, K] with C >= 2, constant bias or none, zero padding given as `pads`, static
length, at most MAX_POSITIONS output positions) as:

    x [N, C, L] -Transpose-> [N, L, C] (-Pad rows with zeros-) -Gather rows [L', K']-> [N, L', K', C]
      -Reshape-> [N, L', K' C] -MatMul W'[K' C, Co]-> (-Add bias-) -Transpose-> [N, Co, L']

where taps that read only padding for every output position are dropped (K' <= K: one position of a 3-tap,
padding-1 conv reads its centre tap only), and the Pad is left out when no kept tap reads padding.
`cancel_transposes` then removes Transpose pairs that undo each other around one elementwise op (the Relu
between two rewritten convs), so a chain of such convs stays channels-last.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers, insert_before, rename_reads
from edgeslim.onnxkit.static_shapes import Dim

MAX_POSITIONS = 8  # output positions of a conv taken (measured with 1-4)
UNARY = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Abs", "Neg", "Sqrt", "Exp",
         "Clip"}  # elementwise ops of one tensor input: a transpose commutes with them


def conv_rows(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    """Rewrite, in place, the Convs of the main graph the module docstring describes; returns how many."""
    before: dict[int, list[onnx.NodeProto]] = {}
    done = 0
    nodes: list[onnx.NodeProto] = list(g.node)  # held: insert_before finds them by id()
    for n in nodes:
        new = _rows(g, n, dims, consts)
        if new is None:
            continue
        before[id(n)] = new[:-1]
        last = new[-1]  # the Transpose back, written in place of the Conv (same output name)
        n.op_type, n.domain = last.op_type, ""
        del n.attribute[:]
        n.attribute.extend(last.attribute)
        n.input[:] = list(last.input)
        done += 1
    if before:
        insert_before(g, before)
        cancel_transposes(g)
    return done


def _rows(g: onnx.GraphProto, n: onnx.NodeProto, dims: dict[str, list[Dim]],
          consts: Consts) -> list[onnx.NodeProto] | None:
    if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or len(n.output) != 1 or len(n.input) < 2:
        return None
    w = consts.get(n.input[1])
    has_bias = len(n.input) > 2 and bool(n.input[2])
    bias = consts.get(n.input[2]) if has_bias else None
    if w is None or w.ndim != 3 or w.shape[1] < 2 or w.dtype != np.float32 or (has_bias and bias is None):
        return None
    if int(attr(n, "group", 1)) != 1 or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    xd = dims.get(n.input[0])
    if xd is None or len(xd) != 3 or not isinstance(xd[2], int) or xd[1] != w.shape[1]:
        return None
    co, c, k = w.shape
    length = int(xd[2])
    pb, pe = (int(p) for p in attr(n, "pads", [0, 0]))
    stride, dil = int(attr(n, "strides", [1])[0]), int(attr(n, "dilations", [1])[0])
    out_len = (length + pb + pe - dil * (k - 1) - 1) // stride + 1
    if not 1 <= out_len <= MAX_POSITIONS:
        return None
    pos = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dil - pb  # [L', K] input position
    taps = [j for j in range(k) if np.any((pos[:, j] >= 0) & (pos[:, j] < length))]  # taps reading real rows
    pos = pos[:, taps]
    padded = bool(np.any(pos < 0) or np.any(pos >= length))
    lo = int(max(0, -pos.min()))
    hi = int(max(0, pos.max() - length + 1))
    y = n.output[0]
    nm = {t: unique_name(g, f"{y}_{t}") for t in ("t_in", "pads", "padded", "idx", "rows", "shape", "flat", "w",
                                                  "mm", "b", "mmb")}
    nodes = [helper.make_node("Transpose", [n.input[0]], [nm["t_in"]], perm=[0, 2, 1])]  # [N, L, C]
    src = nm["t_in"]
    if padded:
        g.initializer.append(numpy_helper.from_array(np.array([0, lo, 0, 0, hi, 0], np.int64), nm["pads"]))
        nodes.append(helper.make_node("Pad", [src, nm["pads"]], [nm["padded"]]))  # zeros: [N, lo + L + hi, C]
        src = nm["padded"]
    wk = np.ascontiguousarray(w[:, :, taps].transpose(2, 1, 0).reshape(len(taps) * c, co))  # [K' C, Co]
    g.initializer.append(numpy_helper.from_array(wk, nm["w"]))
    if len(taps) == 1 and not padded and out_len == length and np.array_equal(pos[:, 0], np.arange(length)):
        flat = src  # one tap reading every row in order (a 1x1 conv, one position of a padded 3-tap conv)
    else:
        g.initializer.append(numpy_helper.from_array((pos + lo).astype(np.int64), nm["idx"]))
        g.initializer.append(numpy_helper.from_array(np.array([0, out_len, len(taps) * c], np.int64), nm["shape"]))
        nodes += [helper.make_node("Gather", [src, nm["idx"]], [nm["rows"]], axis=1),  # [N, L', K', C]
                  helper.make_node("Reshape", [nm["rows"], nm["shape"]], [nm["flat"]])]  # [N, L', K' C]
        flat = nm["flat"]
    nodes.append(helper.make_node("MatMul", [flat, nm["w"]], [nm["mm"]]))  # [N, L', Co]
    last = nm["mm"]
    if bias is not None:
        g.initializer.append(numpy_helper.from_array(bias.reshape(co).astype(np.float32), nm["b"]))
        nodes.append(helper.make_node("Add", [last, nm["b"]], [nm["mmb"]]))
        last = nm["mmb"]
    nodes.append(helper.make_node("Transpose", [last], [y], perm=[0, 2, 1]))  # [N, Co, L']
    return nodes


def _perm(n: onnx.NodeProto) -> list[int] | None:
    p = attr(n, "perm", None)
    return None if p is None else [int(v) for v in p]


def cancel_transposes(g: onnx.GraphProto) -> int:
    """Transpose(P) -> [one UNARY op] -> Transpose(Q) with Q undoing P, each tensor between read once and no
    graph output: the op reads the first Transpose's input and the second Transpose's readers read the op.
    Returns how many pairs were removed (in place; the Transposes are left without readers)."""
    outputs = {o.name for o in g.output}
    prod = {o: n for n in g.node for o in n.output if o}
    readers = consumers(g)
    done = 0
    for t2 in list(g.node):
        if t2.op_type != "Transpose" or _perm(t2) is None:
            continue
        u = prod.get(t2.input[0])
        if u is None or u.op_type not in UNARY or len(u.output) != 1 or u.output[0] in outputs:
            continue
        t1 = prod.get(u.input[0])
        if t1 is None or t1.op_type != "Transpose" or t1.input[0] == "" or t1.output[0] in outputs:
            continue
        p, q = _perm(t1), _perm(t2)
        if p is None or q is None or len(p) != len(q) or [p[i] for i in q] != list(range(len(p))):
            continue
        if len(readers.get(u.output[0], [])) != 1 or len(readers.get(t1.output[0], [])) != 1:
            continue
        u.input[0] = t1.input[0]
        y = t2.output[0]
        if y in outputs:  # the op writes the graph output's name
            u.output[0] = y
            g.node.remove(t2)
        else:
            rename_reads(g, {y: u.output[0]})
        done += 1
    return done
