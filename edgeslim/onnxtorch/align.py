"""Channel counts of an exported (pruned) graph padded with zeros to a multiple ONNX Runtime's CPU kernels want.

Why: ONNX Runtime's NCHWc layout (its fast CPU convolutions, `NchwcTransformer`) takes a convolution only when
its input channels are a multiple of 4 (and at least the SIMD block, 8 or 16), and a Concat only when every
part is a multiple of the block. Pruning leaves counts such as 45 or 357: those convolutions fall back to plain
NCHW kernels with reorders around them, and a ddddocr detector with 6% fewer MACs ran 8% slower than the
original (docs/benchmarks.md, "Re-exported stages as fast as the original"). ONNX Runtime pads output channels
to its block itself, so padding to 8 costs little work there; its INT8 kernels gain from it too.

How: a group of convolutions whose outputs meet (residual Add/Mul, same channel count) gets zero output rows
(bias 0) up to the multiple; the extra channels are followed through ops that keep channels apart (activations,
per-channel constants, BatchNormalization, pools, Resize, Concat on the channel axis, depthwise convolutions)
to the convolutions that read them, which get zero input columns there. The function is the same: every
padded channel meets only zero weights. A group whose channels reach anything else (Reshape, Slice, Split,
Shape, a graph output, a matrix product, a reduction) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.graph import all_nodes

# ops applied channel by channel: the padded channels stay where they are (values there are never read)
_SAME = {"Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Clip", "Elu", "Selu", "Softplus",
         "Identity", "Dropout", "Cast", "Exp", "Abs", "Neg", "Erf", "Gelu", "PRelu", "Mish", "Softsign",
         "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample",
         "BatchNormalization", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}
_PAD_ONE = {"Mul", "Div", "PRelu"}  # per-channel constants of these ops are padded with 1, others with 0


class _Graph:
    """The main graph's producers, consumers, constants and inferred channel counts."""

    def __init__(self, m: onnx.ModelProto) -> None:
        self.m = m
        g = m.graph
        self.inits = {t.name: t for t in g.initializer}
        self.const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.prod = {o: n for n in g.node for o in n.output if o}
        self.cons: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        # names read inside If/Loop bodies: a padded tensor must not flow into a body unseen
        self.outputs |= {i for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                         for sn in all_nodes(a.g) for i in sn.input}
        self.shapes: dict[str, list[int | None]] = {}
        try:
            probe = onnx.ModelProto()
            probe.CopyFrom(m)
            del probe.graph.value_info[:]
            inf = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
            for v in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
                if v.type.tensor_type.HasField("shape"):
                    self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None
                                           for d in v.type.tensor_type.shape.dim]
        except Exception:
            pass

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.const_nodes:
            return numpy_helper.to_array(helper.get_attribute_value(self.const_nodes[name].attribute[0]))
        return None

    def attr(self, n: onnx.NodeProto, key: str, default: int | list | str | None = None):
        for a in n.attribute:
            if a.name == key:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def weight(self, n: onnx.NodeProto) -> np.ndarray | None:
        return self.const(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None

    def channels(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return s[1] if s and len(s) > 1 else None


def _conv_kind(g: _Graph, n: onnx.NodeProto) -> str | None:
    """'dense' (group 1), 'depthwise' (one channel per group) or None (other grouped convs, runtime weights)."""
    w = g.weight(n)
    if w is None or (len(n.input) > 2 and n.input[2] and g.const(n.input[2]) is None):
        return None
    groups = int(g.attr(n, "group", 1))
    if groups == 1:
        return "dense"
    return "depthwise" if w.shape[1] == 1 and w.shape[0] == groups else None


class _Plan:
    """One group: producer convs padded at the end, the masks (True = real channel) of the tensors carrying the
    padding, and the edits those masks imply."""

    def __init__(self) -> None:
        self.producers: list[onnx.NodeProto] = []
        self.masks: dict[str, np.ndarray] = {}
        # keyed by id(node) (and input index): a node met twice is edited once
        self.readers: dict[int, tuple[onnx.NodeProto, np.ndarray]] = {}   # dense convs: zero input columns
        self.depthwise: dict[int, tuple[onnx.NodeProto, np.ndarray]] = {}  # depthwise convs: zero rows
        self.consts: dict[tuple[int, int], tuple[onnx.NodeProto, int, np.ndarray]] = {}  # per-channel operands
        self.bn: dict[int, tuple[onnx.NodeProto, np.ndarray]] = {}


def _back_to_conv(g: _Graph, name: str, seen: set[str]) -> list[onnx.NodeProto] | None:
    """The dense convolutions whose output channels reach `name` through channel-wise ops, else None."""
    if name in seen:  # already carrying the padding (or met on this walk)
        return []
    seen.add(name)
    n = g.prod.get(name)
    if n is None:
        return None
    if n.op_type == "Conv":
        return [n] if _conv_kind(g, n) == "dense" else None
    if n.op_type not in _SAME:
        return None
    found: list[onnx.NodeProto] = []
    for i in n.input[:1] if n.op_type in ("BatchNormalization", "Resize", "Upsample", "Clip") else n.input:
        if not i or g.const(i) is not None:
            continue
        r = _back_to_conv(g, i, seen)
        if r is None:
            return None
        found += r
    return found


def _plan(g: _Graph, start: onnx.NodeProto, multiple: int) -> _Plan | None:
    """The padding plan of the group that `start` (a dense conv) belongs to, or None when it cannot be padded."""
    w = g.weight(start)
    assert w is not None
    c = int(w.shape[0])
    mask = np.concatenate([np.ones(c, bool), np.zeros(-c % multiple, bool)])
    plan = _Plan()
    todo = [start]
    queue: list[str] = []
    while todo:
        p = todo.pop()
        if any(p is q for q in plan.producers):
            continue
        pw = g.weight(p)
        if pw is None or int(pw.shape[0]) != c or p.output[0] in plan.masks:
            return None
        plan.producers.append(p)
        plan.masks[p.output[0]] = mask
        queue.append(p.output[0])
        while queue:
            t = queue.pop()
            if t in g.outputs:
                return None
            for n in g.cons.get(t, []):
                out = _follow(g, n, plan, todo)
                if out is None:
                    return None
                for name, mk in out:
                    old = plan.masks.get(name)
                    if old is not None:
                        if not np.array_equal(old, mk):
                            return None
                        continue
                    plan.masks[name] = mk
                    queue.append(name)
    return plan


def _follow(g: _Graph, n: onnx.NodeProto, plan: _Plan, todo: list[onnx.NodeProto]) -> list | None:
    """What node `n` does with the padded channels it reads: [(output, mask)] it passes them on to, [] when it
    absorbs them (a dense conv), None when it cannot take them. Edits are recorded in `plan`."""
    masks = plan.masks
    if n.op_type == "Conv":
        kind = _conv_kind(g, n)
        mk = masks.get(n.input[0])
        w = g.weight(n)
        if mk is None or w is None or n.input[1] in masks:
            return None
        if kind == "dense" and w.shape[1] == mk.sum():
            plan.readers[id(n)] = (n, mk)
            return []
        if kind == "depthwise" and w.shape[0] == mk.sum():
            plan.depthwise[id(n)] = (n, mk)
            return [(n.output[0], mk)]
        return None
    if n.op_type == "Concat":
        rank = len(g.shapes.get(n.output[0]) or [])
        axis = int(g.attr(n, "axis", 0))
        if rank < 2 or axis not in (1, 1 - rank):
            return None
        parts = []
        for i in n.input:
            if i in masks:
                parts.append(masks[i])
                continue
            v = g.const(i)
            ch = (int(v.shape[1]) if v.ndim > 1 else None) if v is not None else g.channels(i)
            if ch is None:
                return None
            parts.append(np.ones(ch, bool))
        return [(n.output[0], np.concatenate(parts))]
    if n.op_type not in _SAME or (n.op_type == "Div" and n.input[1] in masks):  # x / 0 on the padding
        return None
    data = n.input[:1] if n.op_type in ("BatchNormalization", "Resize", "Upsample", "Clip") else n.input
    mk = None
    for k, i in enumerate(n.input):
        if not i:
            continue
        if i in masks and (k == 0 or i in data):
            mk = masks[i] if mk is None else mk
            if not np.array_equal(mk, masks[i]):
                return None
    if mk is None or any(o for o in n.output[1:]):  # padding into a parameter input; a second output
        return None
    if n.op_type in ("Resize", "Upsample"):
        sc = g.const(n.input[2]) if n.op_type == "Resize" and len(n.input) > 2 and n.input[2] else \
            g.const(n.input[1]) if n.op_type == "Upsample" else None
        if (len(n.input) > 3 and n.input[3]) or sc is None or sc.size < 2 or float(sc.reshape(-1)[1]) != 1.0:
            return None
    if n.op_type == "BatchNormalization":
        if len(n.output) > 1 or any(g.const(i) is None for i in n.input[1:5]):
            return None
        plan.bn[id(n)] = (n, mk)
        return [(n.output[0], mk)]
    rank = len(g.shapes.get(n.output[0]) or [])
    for k, i in enumerate(n.input):
        if not i or i in masks or k >= len(data):
            continue
        v = g.const(i)
        if v is None:  # a runtime operand without the padding: its producers join the group
            found = _back_to_conv(g, i, set(masks))  # [] when it comes from carrying tensors only
            if found is None or rank < 2:
                return None
            todo.extend(found)
            continue
        if v.size == 1:
            continue
        pos = 1 - (rank - v.ndim)  # the channel axis in the constant, broadcast from the right
        if rank < 2:  # rank unknown: where the channel axis is cannot be told
            return None
        if pos < 0 or v.shape[pos] == 1:
            continue
        if v.shape[pos] != int(mk.sum()) or any(d != 1 for j, d in enumerate(v.shape) if j != pos):
            return None
        plan.consts[(id(n), k)] = (n, k, mk)
    return [(o, mk) for o in n.output[:1]]


def _expand(v: np.ndarray, axis: int, mask: np.ndarray, fill: float) -> np.ndarray:
    """`v` with `fill` inserted along `axis` where `mask` is False."""
    shape = list(v.shape)
    shape[axis] = len(mask)
    out = np.full(shape, fill, v.dtype)
    idx: list = [slice(None)] * v.ndim
    idx[axis] = np.flatnonzero(mask)
    out[tuple(idx)] = v
    return out


def _set_input(g: _Graph, n: onnx.NodeProto, k: int, v: np.ndarray) -> None:
    """Input `k` of `n` becomes a new initializer holding `v` (the old one may be shared)."""
    base = f"{n.input[k]}_aligned"
    name, j = base, 1
    while name in g.inits or name in g.prod:
        j += 1
        name = f"{base}{j}"
    t = numpy_helper.from_array(v, name)
    g.m.graph.initializer.append(t)
    g.inits[name] = t
    n.input[k] = name


def _apply(g: _Graph, plan: _Plan) -> None:
    for p in plan.producers:
        mk = plan.masks[p.output[0]]
        _set_input(g, p, 1, _expand(g.weight(p), 0, mk, 0.0))  # type: ignore[arg-type]
        if len(p.input) > 2 and p.input[2]:
            _set_input(g, p, 2, _expand(g.const(p.input[2]), 0, mk, 0.0))  # type: ignore[arg-type]
    for n, mk in plan.readers.values():
        _set_input(g, n, 1, _expand(g.weight(n), 1, mk, 0.0))  # type: ignore[arg-type]
    for n, mk in plan.depthwise.values():
        _set_input(g, n, 1, _expand(g.weight(n), 0, mk, 0.0))  # type: ignore[arg-type]
        if len(n.input) > 2 and n.input[2]:
            _set_input(g, n, 2, _expand(g.const(n.input[2]), 0, mk, 0.0))  # type: ignore[arg-type]
        for a in n.attribute:
            if a.name == "group":
                a.i = len(mk)
    for n, mk in plan.bn.values():  # scale 0, bias 0, mean 0, var 1 on the padding
        for k, fill in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0)):
            _set_input(g, n, k, _expand(g.const(n.input[k]), 0, mk, fill))  # type: ignore[arg-type]
    for n, k, mk in plan.consts.values():
        v = g.const(n.input[k])
        assert v is not None
        rank = len(g.shapes.get(n.output[0]) or [])
        _set_input(g, n, k, _expand(v, 1 - (rank - v.ndim), mk, 1.0 if n.op_type in _PAD_ONE else 0.0))


def _unaligned(c: int, multiple: int) -> bool:
    """Worth padding: not a multiple, and at least two multiples (ONNX Runtime reads fewer channels than its
    SIMD block through a kernel of their own, and padding 12 channels to 16 would add a third to the layer's work
    wherever zeros are not free, e.g. INT8 kernels)."""
    return c % multiple != 0 and c >= 2 * multiple


def align_channels(model: onnx.ModelProto, multiple: int = 8) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` whose dense convolutions' output channels (2 x `multiple` or more) are zero-padded to a
    multiple of `multiple` wherever the padding can be followed to the convolutions that read it (module docstring); the same
    function up to float rounding. Returns (model, number of convolutions padded)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    padded = 0
    tried: set[str] = set()
    while True:
        g = _Graph(m)
        cand = [n for n in m.graph.node if n.op_type == "Conv" and _conv_kind(g, n) == "dense"
                and n.output[0] not in tried and _unaligned(int(g.weight(n).shape[0]), multiple)]  # type: ignore[union-attr]
        if not cand:
            break
        plan = _plan(g, cand[0], multiple)
        tried.add(cand[0].output[0])
        if plan is None:
            continue
        _apply(g, plan)
        padded += len(plan.producers)
        tried.update(p.output[0] for p in plan.producers)
    if padded:
        del m.graph.value_info[:]  # the channel counts changed; ONNX Runtime infers them again
        used = {i for n in m.graph.node for i in n.input}
        keep = [t for t in m.graph.initializer if t.name in used or t.name in {i.name for i in m.graph.input}]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
    return m, padded
