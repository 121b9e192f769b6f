"""Fuse decomposed activations back into one operator: hard-swish.

Paddle (and older PyTorch) exports write hard-swish as four element-wise nodes,
`Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)` (or with the Div before the Mul). For FP32 that is four passes
over the tensor where one would do; for static INT8 it is worse: ONNX Runtime has no integer Div, so
every such activation costs a dequantize/quantize pair and three extra rounding points. One
`HardSwish` node (opset 14) computes the same function, x * clip(x / 6 + 0.5, 0, 1); before opset 14
`Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))` does. `x * HardSigmoid(x, 1/6, 0.5)` itself becomes
`HardSwish` from opset 14 on.
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeslim.onnxkit.consts import Consts, attr
from edgeslim.onnxkit.graph import consumers, remove_dead
from edgeslim.onnxkit.load import default_opset

HARDSWISH_OPSET = 14


def _close(v: float | None, want: float, tol: float = 1e-4) -> bool:
    return v is not None and abs(v - want) <= tol * max(1.0, abs(want))


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a binary node that is not `name` (None when both or neither are)."""
    ins = list(node.input[:2])
    if ins.count(name) != 1:
        return None
    return ins[1 - ins.index(name)]


def _clip_0_6(n: onnx.NodeProto, c: Consts) -> bool:
    if n.op_type != "Clip":
        return False
    lo = c.scalar(n.input[1]) if len(n.input) > 1 and n.input[1] else attr(n, "min")
    hi = c.scalar(n.input[2]) if len(n.input) > 2 and n.input[2] else attr(n, "max")
    return _close(lo, 0.0) and _close(hi, 6.0)


def _div6(n: onnx.NodeProto, t: str, c: Consts) -> bool:
    """`n` computes t / 6 (Div by 6 or Mul by 1/6)."""
    if n.op_type == "Div" and n.input[0] == t:
        return _close(c.scalar(n.input[1]), 6.0)
    if n.op_type == "Mul":
        o = _other(n, t)
        return o is not None and _close(c.scalar(o), 1 / 6)
    return False


def _match(add: onnx.NodeProto, c: Consts, cons: dict) -> tuple[str, list[onnx.NodeProto], str] | None:
    """(x, nodes of the pattern, output) for a hard-swish starting at `add`, else None."""
    if add.op_type != "Add":
        return None
    x = None
    for i in add.input[:2]:
        o = _other(add, i)
        if o is not None and i not in c and _close(c.scalar(o), 3.0):
            x = i
    if x is None:
        return None

    def only(t: str) -> onnx.NodeProto | None:
        r = cons.get(t, [])
        return r[0] if len(r) == 1 else None

    clip = only(add.output[0])
    if clip is None or not _clip_0_6(clip, c):
        return None
    n3 = only(clip.output[0])
    if n3 is None:
        return None
    if n3.op_type == "Mul" and _other(n3, clip.output[0]) == x:  # Div(Mul(x, clip), 6)
        n4 = only(n3.output[0])
        if n4 is not None and _div6(n4, n3.output[0], c):
            return x, [add, clip, n3, n4], n4.output[0]
    if _div6(n3, clip.output[0], c):  # Mul(x, clip / 6)
        n4 = only(n3.output[0])
        if n4 is not None and n4.op_type == "Mul" and _other(n4, n3.output[0]) == x:
            return x, [add, clip, n3, n4], n4.output[0]
    return None


def fuse_hardswish(model: onnx.ModelProto) -> int:
    """Rewrite, in place, decomposed hard-swish (and x * HardSigmoid(x) from opset 14) into HardSwish
    (opset >= 14) or Mul(x, HardSigmoid(x)). Returns how many activations were rewritten."""
    g = model.graph
    opset = default_opset(model)
    c = Consts(g)
    cons = consumers(g)
    outputs = {o.name for o in g.output}
    replace: dict[int, list[onnx.NodeProto]] = {}  # id(first node of a pattern) -> new nodes
    drop: set[int] = set()
    k = 0
    for n in g.node:
        m = _match(n, c, cons)
        if m is not None:
            x, nodes, y = m
            if any(o in outputs for nd in nodes[:-1] for o in nd.output):
                continue
            base = nodes[0].name or f"hardswish_{k}"
            if opset >= HARDSWISH_OPSET:
                new = [helper.make_node("HardSwish", [x], [y], name=f"{base}_hardswish")]
            else:
                hs = f"{y}_hsig"
                new = [helper.make_node("HardSigmoid", [x], [hs], alpha=1 / 6, beta=0.5, name=f"{base}_hsig"),
                       helper.make_node("Mul", [x, hs], [y], name=f"{base}_hswish")]
        elif opset >= HARDSWISH_OPSET and n.op_type == "HardSigmoid" and _close(attr(n, "alpha", 0.2), 1 / 6) \
                and _close(attr(n, "beta", 0.5), 0.5):
            r = cons.get(n.output[0], [])
            if len(r) != 1 or r[0].op_type != "Mul" or _other(r[0], n.output[0]) != n.input[0] \
                    or n.output[0] in outputs:
                continue
            nodes, y = [n, r[0]], r[0].output[0]
            new = [helper.make_node("HardSwish", [n.input[0]], [y], name=f"{n.name or k}_hardswish")]
        else:
            continue
        if any(id(nd) in drop for nd in nodes):
            continue
        drop |= {id(nd) for nd in nodes}
        replace[id(nodes[-1])] = new  # insert where the pattern ends: its input x is defined before it
        k += 1
    if not k:
        return 0
    out: list[onnx.NodeProto] = []
    for n in g.node:
        if id(n) in replace:
            out += replace[id(n)]
        elif id(n) not in drop:
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    remove_dead(model)
    return k
