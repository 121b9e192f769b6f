"""A constant per-channel affine on a feature map, written as a 1x1 depthwise Conv (issue 23).

PP-OCRv4's "learnable affine blocks" (y = s * x + b, scalar s and b, after every activation) are folded into a
neighbouring conv where that is exact (`bnfold.fold_affine`). One case is left: the block in front of a padded
(depthwise) conv, where the Add is not exact to fold (the zero padding would turn into -b). There ONNX Runtime
runs it as a Mul and an Add in plain NCHW, and because its blocked (NCHWc) kernels take neither, it converts the
map out of the blocked layout before them and back after: four passes over the map (ReorderOutput, Mul, Add,
ReorderInput) between two convs. Written as one Conv with group = channels, a 1x1 kernel holding s and a bias
holding b, the same arithmetic is one blocked kernel and the reorders go (PP-OCRv4 rec's last stage: 13 blocks,
1.05x; det's: 4 blocks, 1.045x; timed interleaved, ORT 1.32, one thread).

`affine_as_conv` rewrites a chain of Mul / Add nodes, each with one constant operand that is a scalar or one value
per channel ([C, 1, 1] or [1, C, 1, 1]), on a rank-4 float map computed from the graph's inputs (not a weight's
dequantization) whose channel count is known, when a Conv makes the map (directly or through an activation) or
reads the chain's result. It is exact up to float rounding (s * x + b either way). Not applied inside
`If`/`Loop` bodies.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import Consts, unique_name
from edgeslim.onnxkit.graph import consumers, remove_dead
from edgeslim.onnxkit.static_shapes import Dim, symbolic_dims

ACTIVATIONS = ("Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Clip", "LeakyRelu", "Tanh")


def _per_channel(v: np.ndarray, c: int) -> np.ndarray | None:
    """`v` as one value per channel of an NCHW map it broadcasts against, or None when it is not that."""
    if v.size == 1 and v.ndim <= 4:
        return np.full(c, float(v.ravel()[0]), np.float32)
    if v.size == c and (v.shape == (c, 1, 1) or v.shape == (1, c, 1, 1)):
        return v.reshape(c).astype(np.float32)
    return None


def _from_conv(prod: dict[str, onnx.NodeProto], t: str) -> bool:
    """Whether a Conv makes `t`, directly or through element-wise activations."""
    n = prod.get(t)
    while n is not None and n.op_type in ACTIVATIONS:
        n = prod.get(n.input[0])
    return n is not None and n.op_type == "Conv"


def _live(g: onnx.GraphProto) -> set[str]:
    """Tensors computed from the graph's inputs (a weight's Cast / dequantization is not)."""
    live = {i.name for i in g.input}
    for n in g.node:
        if any(i in live for i in n.input):
            live.update(n.output)
    return live


def affine_as_conv(model: onnx.ModelProto, dims: dict[str, list[Dim]] | None = None) -> int:
    """Rewrite, in place, constant per-channel Mul/Add chains on feature maps as 1x1 depthwise Convs (module
    docstring); returns how many chains were rewritten."""
    g = model.graph
    dims = symbolic_dims(model) if dims is None else dims
    if not dims:
        return 0
    c, cons, live = Consts(g), consumers(g), _live(g)
    prod = {o: n for n in g.node for o in n.output}
    outs = {o.name for o in g.output}
    done, gone = 0, set()
    for n in list(g.node):
        if id(n) in gone or n.op_type not in ("Mul", "Add") or len(n.input) != 2:
            continue
        chain: list[tuple[onnx.NodeProto, np.ndarray]] = []
        cur: onnx.NodeProto | None = n
        while cur is not None and cur.op_type in ("Mul", "Add") and len(cur.input) == 2 and id(cur) not in gone:
            k = [c.get(i) for i in cur.input]
            x = [i for i, v in zip(cur.input, k) if v is None]
            if len(x) != 1 or (chain and x[0] != chain[-1][0].output[0]):
                break
            chain.append((cur, next(v for v in k if v is not None)))
            nxt = cons.get(cur.output[0], [])
            cur = nxt[0] if len(nxt) == 1 and cur.output[0] not in outs else None
        if not chain:
            continue
        x0 = next(i for i in chain[0][0].input if c.get(i) is None)
        d = dims.get(x0)
        if x0 not in live or not d or len(d) != 4 or not isinstance(d[1], int):
            continue
        readers = cons.get(chain[-1][0].output[0], [])
        into_conv = len(readers) == 1 and readers[0].op_type == "Conv" and readers[0].input[0] == chain[-1][0].output[0]
        if not (into_conv or _from_conv(prod, x0)):
            continue
        ch = d[1]
        scale, shift = np.ones(ch, np.float32), np.zeros(ch, np.float32)
        for node, v in chain:
            pc = _per_channel(np.asarray(v), ch)
            if pc is None or np.asarray(v).dtype != np.float32:
                break
            if node.op_type == "Mul":
                scale, shift = scale * pc, shift * pc
            else:
                shift = shift + pc
        else:
            w = numpy_helper.from_array(scale.reshape(ch, 1, 1, 1), unique_name(g, "affine_w"))
            b = numpy_helper.from_array(shift, unique_name(g, "affine_b"))
            g.initializer.extend([w, b])
            last = chain[-1][0]
            conv = helper.make_node("Conv", [x0, w.name, b.name], [last.output[0]], name=f"{w.name}_conv",
                                    group=ch, kernel_shape=[1, 1])
            g.node.insert(list(g.node).index(last), conv)
            for node, _ in chain:
                g.node.remove(node)
                gone.add(id(node))
            done += 1
    if done:
        remove_dead(model)
    return done
