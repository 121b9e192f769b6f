"""Row-wise MatMul + bias as one 2-D Gemm, unary ops moved off view chains, identity Gathers as views (issue 23).

A small streaming model (the silero VAD: about 55 us a call in ONNX Runtime, batch 1, one thread) runs its
1-D convs, once `conv_rows` has rewritten them, as MatMul of a 3-D [N, T, K] tensor by a constant [K, Co]
weight, then Add of the bias, then Relu. ONNX Runtime fuses MatMul + Add into Gemm only on 2-D inputs whose
shapes it knows (a symbolic batch stops it), so each layer is three kernels; and a Relu or Sigmoid between two
view ops (Reshape, a Transpose of a size-1 axis) keeps `view_chains.collapse_views` from merging them.
Four rules of `cheap_ops.cheapen_ops`, main graph only, where the pattern is met exactly:

- `matmul_gemm`: MatMul(A, W) + Add(b), A made by a view op (read only by the MatMul), of rank >= 3 with every
  dim but the first static ([N, M.., K]), W a constant [K, Co], b a constant of Co elements (shape [Co],
  [1, Co], [1, 1, Co], ...), the MatMul read only by the Add, the Add read only by a view op or an activation
  ONNX Runtime fuses into Gemm (so no kernel is added) -> Reshape(A, [-1, K]) -> Gemm(W, b) ->
  Reshape([-1, M.., Co]) (the Add's output name kept). The Reshape to rows merges with the view op that makes
  A, the one back with the views beside it (`collapse_views` runs after each round of the rules), and ONNX
  Runtime fuses the Gemm with a Relu that follows it (FusedGemm);
- `gather_view`: a Gather of a constant index array holding 0, 1, .. d-1 in order over an axis of size d (a
  conv of one output position over all the positions, as `conv_rows` writes it) -> a Reshape (a view, which
  then collapses with its neighbours);
- `unary_views`: an elementwise unary op (Relu, Sigmoid, Tanh, ...) whose input is a view op's output (its only
  reader) moved in front of the view op (op(view(x)) == view(op(x))), through every view op of the chain, so
  the views meet and collapse and the op sits right after the kernel it can fuse with;
- `rnn_outputs`: outputs of an LSTM/GRU/RNN that nothing reads (the full sequence Y of a streaming model that
  reads only the last state Y_h, Y_c) dropped (written as an empty name: the op does not store them); at least
  one output is kept. Not in DEFAULT_RULES: 1.003x-1.015x on the VADs' last stages, within the noise.

Measured on the silero VAD's last stage (benchmarks/bench_cheap_ops.py, docs/benchmarks.md, issue 23 tenth
session). Exact within float rounding (Gemm sums in another order than MatMul + Add: ~3e-7 on the VAD).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers
from edgeslim.onnxkit.static_shapes import Dim
from edgeslim.onnxkit.view_chains import is_main_node, is_view_node

# elementwise ops of one input: op(view(x)) == view(op(x)) for any view
UNARY_OPS = {"Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Softplus", "Softsign",
             "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Erf", "Gelu", "Mish", "Sin", "Cos", "Floor",
             "Ceil", "Round", "Sign", "Not", "ThresholdedRelu", "Celu"}
# activations ONNX Runtime fuses into a Gemm before them (GemmActivationFusion -> FusedGemm)
GEMM_ACTS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Elu", "Selu", "Softplus", "Softsign"}
MAX_WALK = 16  # view ops a unary op is moved through
MAX_ROUNDS = 4  # rounds of the three rules
RULES = ("matmul_gemm", "gather_view", "unary_views", "rnn_outputs")
RNN_OPS = {"LSTM", "GRU", "RNN"}


def gemm_rows(model: onnx.ModelProto, rules: tuple[str, ...]) -> dict[str, int]:
    """Apply the rules of this module named in `rules` to `model` in place, on shapes taken afresh, in rounds
    (a Gemm's Relu moved up by `unary_views` makes the next MatMul's input a view) until one changes nothing,
    with `view_chains.collapse_views` after each; returns how many times each rule was applied."""
    from edgeslim.onnxkit.static_shapes import symbolic_dims
    from edgeslim.onnxkit.view_chains import collapse_views

    counts = dict.fromkeys([r for r in RULES if r in rules], 0)
    if "rnn_outputs" in counts:  # no shapes needed, nothing else depends on it: once
        counts["rnn_outputs"] = rnn_outputs(model.graph)
    steps = {"matmul_gemm": matmul_gemm, "gather_view": gather_views, "unary_views": unary_views}
    dims: dict[str, list[Dim]] | None = None  # shapes of the graph as it is now; None after a change
    for _ in range(MAX_ROUNDS):
        changed = 0
        for r in [r for r in counts if r in steps]:
            dims = symbolic_dims(model) if dims is None else dims
            if not dims:
                return counts
            k = steps[r](model.graph, dims, Consts(model.graph))
            counts[r] += k
            changed += k
            dims = None if k else dims
        if not changed:
            break
        collapse_views(model)  # the Reshapes written merge with the view ops beside them
    return counts


def matmul_gemm(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    """The `matmul_gemm` rewrite (module docstring) in place; returns how many MatMul + Add pairs became Gemm.
    `dims`: fresh `static_shapes.symbolic_dims` of the graph."""
    readers = consumers(g)
    prod = {o: n for n in g.node for o in n.output if o}
    outputs = {o.name for o in g.output}
    done = 0
    for n in list(g.node):
        if n.op_type != "MatMul" or not is_main_node(n) or len(n.input) != 2 or n.output[0] in outputs:
            continue
        a, y = n.input[0], n.output[0]
        w = consts.get(n.input[1])
        da = dims.get(a)
        if w is None or w.ndim != 2 or w.dtype != np.float32 or da is None or len(da) < 3:
            continue
        pa = prod.get(a)  # the Reshape to rows must merge with a view op that makes A, else it is one kernel more
        if pa is None or not is_view_node(pa, dims, consts) or len(readers.get(a, [])) != 1:
            continue
        inner = da[1:]
        if not all(isinstance(d, int) and d > 0 for d in inner) or inner[-1] != w.shape[0]:
            continue
        rd = readers.get(y, [])
        if len(rd) != 1 or rd[0].op_type != "Add" or not is_main_node(rd[0]) or len(rd[0].input) != 2:
            continue
        add = rd[0]
        after = readers.get(add.output[0], [])  # the Reshape back must merge with a view or leave a fusable op
        fits = len(after) == 1 and (after[0].op_type in GEMM_ACTS or (
            is_view_node(after[0], dims, consts) and after[0].input[0] == add.output[0]))
        if add.output[0] in outputs or not fits:
            continue
        bname = add.input[1] if add.input[0] == y else add.input[0]
        b = consts.get(bname)
        co = int(w.shape[1])
        if b is None or b.size != co or b.dtype != np.float32 or b.ndim > len(da) or (b.ndim and b.shape[-1] != co):
            continue
        k = int(w.shape[0])
        rows = [int(d) for d in inner[:-1]]  # type: ignore[arg-type]
        s_in = _const(g, f"{y}_rows_shape", np.array([-1, k], np.int64))
        s_out = _const(g, f"{y}_back_shape", np.array([-1, *rows, co], np.int64))
        bias = bname if b.ndim == 1 else _const(g, f"{bname}_vec", b.reshape(co))
        a2, y2 = unique_name(g, f"{a}_rows"), unique_name(g, f"{y}_gemm")
        i = list(g.node).index(n)
        g.node.remove(n)
        g.node.remove(add)
        for j, m in enumerate([helper.make_node("Reshape", [a, s_in], [a2], name=f"{y}_rows"),
                               helper.make_node("Gemm", [a2, n.input[1], bias], [y2], name=f"{y}_gemm"),
                               helper.make_node("Reshape", [y2, s_out], [add.output[0]], name=f"{y}_back")]):
            g.node.insert(i + j, m)
        done += 1
    return done


def unary_views(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    """The `unary_views` rewrite (module docstring) in place; returns how many unary ops were moved (each
    counted once however many view ops it passed)."""
    outputs = {o.name for o in g.output}
    done = 0
    for name in [u.output[0] for u in g.node if u.op_type in UNARY_OPS and is_main_node(u) and len(u.input) == 1]:
        moved = False
        for _ in range(MAX_WALK):
            prod = {o: n for n in g.node for o in n.output if o}
            u = prod[name]
            readers = consumers(g)
            v = prod.get(u.input[0])
            if v is None or not is_view_node(v, dims, consts) or v.output[0] in outputs \
                    or len(readers.get(v.output[0], [])) != 1:
                break
            # x -> v -> t -> u -> y   becomes   x -> u -> t' -> v -> y   (t' a fresh name: its shape is x's)
            x, t, y = v.input[0], v.output[0], u.output[0]
            t2 = unique_name(g, f"{x}_{u.op_type.lower()}")
            moved_u = onnx.NodeProto()
            moved_u.CopyFrom(u)
            moved_u.input[0], moved_u.output[0] = x, t2
            v.input[0], v.output[0] = t2, y
            if x in dims:
                dims[t2] = dims[x]
            dims[y] = dims.get(y, dims.get(t, []))
            g.node.remove(u)
            g.node.insert(list(g.node).index(v), moved_u)  # u now runs before v
            name = t2
            moved = True
        done += moved
    return done


def gather_views(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    """The `gather_view` rewrite (module docstring) in place; returns how many Gathers became Reshapes."""
    done = 0
    for n in g.node:
        if n.op_type != "Gather" or not is_main_node(n) or len(n.input) != 2:
            continue
        idx, dx = consts.get(n.input[1]), dims.get(n.input[0])
        if idx is None or dx is None or idx.dtype.kind not in "iu":
            continue
        r = len(dx)
        a = int(attr(n, "axis", 0))
        a = a + r if a < 0 else a
        size = dx[a] if 0 <= a < r else None
        if not isinstance(size, int) or idx.size != size:
            continue
        if not np.array_equal(np.where(idx < 0, idx + size, idx).reshape(-1), np.arange(size)):
            continue
        after = list(dx[a + 1:])
        if sum(not isinstance(d, int) for d in after) > 1:
            continue
        target = [0] * a + list(idx.shape) + [d if isinstance(d, int) else -1 for d in after]
        n.op_type = "Reshape"
        del n.attribute[:]
        n.input[1] = _const(g, f"{n.output[0]}_gather_shape", np.array(target, np.int64))
        done += 1
    return done


def rnn_outputs(g: onnx.GraphProto) -> int:
    """The `rnn_outputs` rewrite (module docstring) in place; returns how many outputs were dropped."""
    readers = consumers(g)
    outputs = {o.name for o in g.output}
    done = 0
    for n in g.node:
        if n.op_type not in RNN_OPS or not _is_main_rnn(n):
            continue
        unused = [i for i, o in enumerate(n.output) if o and o not in outputs and not readers.get(o)]
        if not unused or len(unused) == sum(bool(o) for o in n.output):  # keep at least one output
            continue
        for i in unused:
            n.output[i] = ""
        while n.output and not n.output[-1]:
            del n.output[-1]
        done += len(unused)
    return done


def _is_main_rnn(n: onnx.NodeProto) -> bool:
    return n.domain in ("", "ai.onnx")


def _const(g: onnx.GraphProto, base: str, v: np.ndarray) -> str:
    name = unique_name(g, base)
    g.initializer.append(numpy_helper.from_array(v, name))
    return name
