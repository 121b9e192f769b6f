"""Collapse chains of view ops and of constant Slices that ONNX Runtime would run on every call.

A traced export writes a reshape the way the PyTorch code spelt it: `x.squeeze(0).unsqueeze(0)` after an LSTM,
`h[0].reshape(n, 128).unsqueeze(0)` (a Gather, a Reshape whose target is built from `Shape`/`Gather`/`Concat`, an
Unsqueeze) that gives back the shape it started from, `x[:, :n][:, 129:][..., :4]` as three Slices. ONNX Runtime
keeps each as a kernel call; on a small streaming model (a VAD: about 100 us per call) each costs about 1 us.
`collapse_views` rewrites, in the main graph only:

1. chains of pure view ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity, a Transpose that moves only axes of
   size 1, a Reduce{Mean,Sum,Max,Min,Prod} over axes of size 1: element order and values unchanged) from a root tensor R to a tensor Y: where Y has the
   shape of an earlier tensor of the chain (dims compared as ORT's symbolic shape inference names them), Y's
   readers read that tensor; else a chain of 2+ ops becomes ONE Reshape of R to a constant target (-1 for the one
   dim that is not static; not done when two are);
2. a Slice (steps 1) whose output has its input's shape: its readers read the input;
3. a Slice of a Slice, both with constant starts/ends/axes and steps 1 over static dims: one Slice with the
   composed bounds.

Nodes left without readers (the Shape/Gather/Concat that built a removed Reshape's target) are removed. A graph
output keeps its name: the earlier tensor's producer writes the output's name instead. `If`/`Loop`/`Scan` bodies
are not rewritten; a body that reads a renamed tensor from outside reads the new name (`graph.rename_reads`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers, remove_dead, rename_reads
from edgeslim.onnxkit.static_shapes import Dim, symbolic_dims

VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
# a reduction over axes of size 1 returns its input's values (mean/sum/max/min/prod of one element)
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"}
MAX_CHAIN = 64  # view ops walked back from one tensor


def collapse_views(model: onnx.ModelProto, dims: dict[str, list[Dim]] | None = None) -> int:
    """Rewrite `model` (in place) as the module docstring says; returns how many nodes fewer it has. `dims`:
    `static_shapes.symbolic_dims(model)` when the caller has it (taken before `fold_static_shapes` is fine)."""
    g = model.graph
    before = len(g.node)
    dims = symbolic_dims(model) if dims is None else dims
    if not dims:
        return 0
    consts = Consts(g)
    outputs = {o.name for o in g.output}
    _slices(g, dims, consts, outputs)
    _views(g, dims, consts, outputs)
    remove_dead(model)
    made = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
    stale = [v for v in g.value_info if v.name not in made]  # shapes of tensors no node makes any more
    for v in stale:
        g.value_info.remove(v)
    return before - len(g.node)


def _known(dims: dict[str, list[Dim]], name: str) -> tuple[Dim, ...] | None:
    """The dims of tensor `name` when every one is a number or a symbol, else None."""
    d = dims.get(name)
    return tuple(d) if d is not None and all(x is not None for x in d) else None


def is_main_node(n: onnx.NodeProto) -> bool:
    """A standard-domain node with one output whose first input is present (what a view chain can hold)."""
    return n.domain in ("", "ai.onnx") and len(n.output) == 1 and bool(n.input) and bool(n.input[0])


def is_view_node(n: onnx.NodeProto, dims: dict[str, list[Dim]], consts: Consts) -> bool:
    """True when `n` returns its first input's elements, in order, under another shape."""
    if not is_main_node(n):
        return False
    if n.op_type in VIEW_OPS:
        return True
    xd = dims.get(n.input[0])
    if xd is None:
        return False
    if n.op_type == "Transpose":  # moves only axes of size 1: the other axes keep their order
        perm = attr(n, "perm", None)
        perm = list(range(len(xd)))[::-1] if perm is None else [int(p) for p in perm]
        moved = [p for p in perm if xd[p] != 1]  # a symbol counts as not 1: it may be any size
        return len(perm) == len(xd) and moved == sorted(moved)
    if n.op_type not in REDUCE_OPS:
        return False
    axes = attr(n, "axes", None)
    if axes is None and len(n.input) > 1 and n.input[1]:
        v = consts.get(n.input[1])
        if v is None:
            return False
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    if not axes:
        if int(attr(n, "noop_with_empty_axes", 0)):
            return True
        axes = list(range(len(xd)))
    r = len(xd)
    return all(-r <= int(a) < r and xd[int(a) % r] == 1 for a in axes)


def alias_reads(g: onnx.GraphProto, y: str, t: str, outputs: set[str], prod: dict[str, onnx.NodeProto]) -> bool:
    """Make every reader of `y` read `t` (same values, same shape). A graph output `y` keeps its name: `t`'s
    producer writes `y` and `y`'s old producer goes. False (nothing changed) where that cannot be done."""
    if y not in outputs:
        rename_reads(g, {y: t})
        return True
    p, old = prod.get(t), prod.get(y)
    if p is None or old is None or t in outputs or any(i.name == t for i in g.input):
        return False
    p.output[:] = [y if o == t else o for o in p.output]
    g.node.remove(old)
    rename_reads(g, {t: y})
    prod[y] = p
    del prod[t]
    return True


def _views(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts, outputs: set[str]) -> None:
    prod = {o: n for n in g.node for o in n.output if o}
    nodes: list[onnx.NodeProto] = list(g.node)
    for n in nodes:
        if not is_view_node(n, dims, consts) or prod.get(n.output[0]) is not n:
            continue
        y = n.output[0]
        chain, cur = [y], n
        while len(chain) <= MAX_CHAIN:
            x = cur.input[0]
            chain.insert(0, x)
            p = prod.get(x)
            if p is None or not is_view_node(p, dims, consts):
                break
            cur = p
        sy = _known(dims, y)
        if sy is None:
            continue
        same = next((t for t in chain[:-1] if _known(dims, t) == sy), None)
        if same is not None and alias_reads(g, y, same, outputs, prod):
            continue
        if len(chain) < 3 or any(d == 0 for d in sy) or sum(not isinstance(d, int) for d in sy) > 1:
            continue
        target = np.array([d if isinstance(d, int) else -1 for d in sy], np.int64)
        name = unique_name(g, f"{y}_view_shape")
        g.initializer.append(numpy_helper.from_array(target, name))
        n.op_type, n.domain = "Reshape", ""
        del n.attribute[:]
        n.input[:] = [chain[0], name]


def _bounds(consts: Consts, n: onnx.NodeProto, rank: int) -> dict[int, tuple[int, int]] | None:
    """{axis: (start, end)} of a Slice with constant bounds and steps 1 (raw values), else None."""
    if len(n.input) < 3:
        return None
    vals = [consts.get(i) if i else None for i in (list(n.input[1:5]) + ["", ""])[:4]]
    starts, ends, axes, steps = vals
    if starts is None or ends is None or (len(n.input) > 3 and n.input[3] and axes is None) \
            or (len(n.input) > 4 and n.input[4] and steps is None):
        return None
    s, e = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    ax = np.arange(len(s)) if axes is None else np.asarray(axes).reshape(-1)
    if steps is not None and not np.all(np.asarray(steps) == 1):
        return None
    if len(ax) != len(s) or len(e) != len(s) or not all(-rank <= int(a) < rank for a in ax):
        return None
    return {int(a) % rank: (int(b), int(c)) for a, b, c in zip(ax, s, e)}


def _clamp(b: tuple[int, int], size: int) -> tuple[int, int]:
    """(start, end) of a steps-1 Slice bound on a dim of `size`, as ONNX clamps them: 0 <= start <= end <= size."""
    s = min(max(b[0] + size if b[0] < 0 else b[0], 0), size)
    e = min(max(b[1] + size if b[1] < 0 else b[1], 0), size)
    return s, max(s, e)


def _slices(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts, outputs: set[str]) -> None:
    """Identity Slices read through; a Slice of a Slice (constant bounds, static dims) made one."""
    prod = {o: n for n in g.node for o in n.output if o}
    readers = consumers(g)
    nodes: list[onnx.NodeProto] = list(g.node)
    for n in nodes:
        if n.op_type != "Slice" or not is_main_node(n) or prod.get(n.output[0]) is not n:
            continue
        x, y = n.input[0], n.output[0]
        sx = _known(dims, x)
        if sx is None:
            continue
        steps = consts.get(n.input[4]) if len(n.input) > 4 and n.input[4] else np.ones(1)
        if steps is not None and np.all(np.asarray(steps) == 1) and _known(dims, y) == sx \
                and alias_reads(g, y, x, outputs, prod):
            continue
        p = prod.get(x)
        if p is None or p.op_type != "Slice" or not is_main_node(p) or len(readers.get(x, [])) != 1 or x in outputs:
            continue
        src = p.input[0]
        d0 = dims.get(src)
        if d0 is None:
            continue
        b1, b2 = _bounds(consts, p, len(d0)), _bounds(consts, n, len(d0))
        if b1 is None or b2 is None or not all(isinstance(d0[a], int) for a in b1.keys() | b2.keys()):
            continue
        comp: dict[int, tuple[int, int]] = {}
        for a in sorted(b1.keys() | b2.keys()):
            size = int(d0[a])  # type: ignore[arg-type]
            s1, e1 = _clamp(b1[a], size) if a in b1 else (0, size)
            s2, e2 = _clamp(b2[a], e1 - s1) if a in b2 else (0, e1 - s1)
            comp[a] = (s1 + s2, s1 + e2)
        names = []
        for k, v in (("starts", [c[0] for c in comp.values()]), ("ends", [c[1] for c in comp.values()]),
                     ("axes", list(comp))):
            names.append(unique_name(g, f"{y}_{k}"))
            g.initializer.append(numpy_helper.from_array(np.array(v, np.int64), names[-1]))
            consts.inits[names[-1]] = g.initializer[-1]
        n.input[:] = [src, *names]
        readers.setdefault(src, []).append(n)

