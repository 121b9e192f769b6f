"""Static peak activation memory ("arena") planner over an ONNX graph.

Microcontroller runtimes (TensorFlow Lite Micro) put every intermediate tensor into one arena whose
offsets are fixed before the first inference. This module reproduces that planning on an ONNX graph:

1. shapes are inferred with batch 1 (a symbolic batch becomes 1; other unknown dims need `shapes=`);
2. weights and everything computed only from weights are constants, not arena tensors;
3. ops that a deployment runtime runs in place or as views share their input's buffer: Reshape /
   Flatten / Squeeze / Unsqueeze / Identity, elementwise activations whose input has no other reader
   (fused into the producer as TFLite and ONNX Runtime do), and with `fuse_qdq` the QuantizeLinear /
   DequantizeLinear pairs of a QDQ model (the deployed int8 kernel reads and writes int8 directly, so
   the buffer has the int8 size);
4. a buffer lives from the step of its producer to the step of its last reader (graph inputs from
   step 0, graph outputs to the end), inclusive;
5. offsets are assigned greedy-by-size as TFLite Micro's `GreedyMemoryPlanner` does: largest buffer
   first, each at the lowest offset that does not overlap a placed buffer alive at the same time.

`arena_bytes` is that plan for the graph's own node order; `naive_bytes` is the sum of all
activation buffers (no reuse); `peak_live_bytes` is the largest sum of buffers alive at one step, a
lower bound for any offset assignment with that order. `reorder` searches other topological orders
(exact best-first search on small graphs, a greedy heuristic beyond a state budget) for a lower peak.
All sizes are bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.liveness import TFLM_ALIGN, Buffer, greedy_by_size, lifetimes, peak_live
from edgeslim.onnxkit.load import read_onnx
from edgeslim.onnxkit.shapes import infer_static

VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
INPLACE_OPS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "PRelu", "BatchNormalization"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass
class ArenaPlan:
    arena_bytes: int  # greedy-by-size arena for the graph's node order
    naive_bytes: int  # sum of all activation buffers, no reuse
    peak_live_bytes: int  # max over steps of the bytes alive at once (lower bound for this order)
    order: list[str]  # node names in execution order
    buffers: list[Buffer]
    reordered_arena_bytes: int | None = None  # arena for the best order found by `reorder`
    reordered_order: list[str] | None = None
    reorder_method: str = ""  # "greedy=bound", "exact", "greedy" or "" when not searched
    unknown_tensors: list[str] = field(default_factory=list)  # shapes not inferable: counted as 0 bytes
    control_flow: bool = False  # If/Loop/Scan in the graph: their bodies are not planned (a lower bound)
    fit: dict | None = None  # the RAM/flash verdict on a device, when one was asked for (measure.device_fit)
    warnings: list[str] = field(default_factory=list)  # what was guessed about the inputs

    @property
    def lower_bound(self) -> bool:
        return self.control_flow or bool(self.unknown_tensors)

    @property
    def best_arena_bytes(self) -> int:
        return min(self.arena_bytes, self.reordered_arena_bytes or self.arena_bytes)

    def as_dict(self, buffers: bool = False) -> dict:
        d = asdict(self)
        d["lower_bound"] = self.lower_bound
        if not buffers:
            d.pop("buffers")
        return d


def _tensor_bytes(vi: onnx.ValueInfoProto) -> int | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    if any(v < 0 for v in dims):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):  # undefined or exotic element type
        return None
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    cons: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                cons.setdefault(t, []).append(i)
    return cons


def buffers_of(model: onnx.ModelProto, fuse_qdq: bool = True, fuse_inplace: bool = True,
               shapes: dict[str, list[int]] | None = None, strict: bool = False,
               unknown: list[str] | None = None) -> tuple[onnx.ModelProto, dict[str, str], dict[str, int]]:
    """(static model, tensor -> buffer root, root -> size in bytes) for the activation tensors.

    Tensors whose shape inference cannot resolve (e.g. outputs of If/Loop with differing branches)
    raise with `strict`; otherwise they count 0 bytes and their names are appended to `unknown`."""
    m = infer_static(model, shapes)
    g = m.graph
    nodes = list(g.node)
    const = {t.name for t in g.initializer}
    for n in nodes:  # constant propagation in topological order
        if n.op_type == "Constant" or (n.input and all((not t) or t in const for t in n.input)):
            const.update(o for o in n.output if o)
    info = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    cons = _consumers(nodes)
    graph_io = {v.name for v in g.input} | {v.name for v in g.output}
    root: dict[str, str] = {}
    size: dict[str, int] = {}

    def find(t: str) -> str:
        while root[t] != t:
            t = root[t]
        return t

    for inp in g.input:
        if inp.name not in const:
            root[inp.name] = inp.name
    for n in nodes:
        for o in n.output:
            if o and o not in const:
                root[o] = o
        data_in = n.input[0] if n.input else ""
        if not data_in or data_in in const or data_in not in root or not n.output or n.output[0] in const:
            continue
        op = n.op_type
        single_reader = len(cons.get(data_in, [])) == 1 and data_in not in graph_io
        alias = op in VIEW_OPS and single_reader
        alias |= fuse_inplace and op in INPLACE_OPS and single_reader
        alias |= fuse_qdq and op == "DequantizeLinear"
        alias |= fuse_qdq and op == "QuantizeLinear" and single_reader
        if alias:
            root[n.output[0]] = find(data_in)
    for t in root:
        vi = info.get(t)
        b = _tensor_bytes(vi) if vi is not None else None
        if b is None:
            if strict:
                raise EdgeslimError(f"tensor '{t}' has no inferable shape; pass static input shapes")
            if unknown is not None:
                unknown.append(t)
            b = 0
        r = find(t)
        size[r] = min(size.get(r, b), b)
    return m, {t: find(t) for t in root}, size


def plan_activation_arena(model: str | Path | onnx.ModelProto, *, fuse_qdq: bool = True, fuse_inplace: bool = True,
               align: int = TFLM_ALIGN, reorder: bool = True, max_states: int = 5000,
               shapes: dict[str, list[int]] | None = None, strict: bool = False) -> ArenaPlan:
    """Plan the activation arena of `model` (path or ModelProto) at batch 1. See the module docstring.
    With tensors of unknown shape (listed in `unknown_tensors`) the arena is a lower bound."""
    unknown: list[str] = []
    m, root, size = buffers_of(read_onnx(model), fuse_qdq, fuse_inplace, shapes, strict, unknown)
    g = m.graph
    nodes = [n for n in g.node if any(o in root for o in n.output)]  # constant subgraphs take no arena
    order = list(range(len(nodes)))
    bufs = lifetimes(nodes, order, root, size, [v.name for v in g.input], [v.name for v in g.output], align)
    arena = greedy_by_size(bufs)
    plan = ArenaPlan(
        arena_bytes=arena, naive_bytes=sum(b.size for b in bufs), peak_live_bytes=peak_live(bufs),
        order=[_node_name(nodes[i], i) for i in order], buffers=bufs, unknown_tensors=unknown,
        control_flow=any(n.op_type in ("If", "Loop", "Scan") for n in g.node),
    )
    if reorder and len(nodes) > 1:
        from edgeslim.onnxkit.op_order import best_order

        new, method = best_order(nodes, root, size, [v.name for v in g.input], [v.name for v in g.output],
                                 max_states=max_states)
        if new != order:
            b2 = lifetimes(nodes, new, root, size, [v.name for v in g.input], [v.name for v in g.output], align)
            plan.reordered_arena_bytes = greedy_by_size(b2)
            plan.reordered_order = [_node_name(nodes[i], i) for i in new]
        else:
            plan.reordered_arena_bytes = arena
        plan.reorder_method = method
    return plan


def reorder_model(model: str | Path | onnx.ModelProto, max_states: int = 5000,
                  shapes: dict[str, list[int]] | None = None) -> tuple[onnx.ModelProto, ArenaPlan]:
    """A copy of `model` whose nodes run in the lowest-peak order found (constant-only nodes first), and
    the plan of the new order. Any topological order is a valid ONNX graph, so outputs do not change;
    runtimes that execute in file order (TFLite Micro after conversion) then need the smaller arena."""
    src = read_onnx(model)
    unknown: list[str] = []
    _, root, size = buffers_of(src, shapes=shapes, unknown=unknown)
    g = src.graph
    active = [n for n in g.node if any(o in root for o in n.output)]
    const = [n for n in g.node if not any(o in root for o in n.output)]
    from edgeslim.onnxkit.op_order import best_order

    order, _ = best_order(active, root, size, [v.name for v in g.input], [v.name for v in g.output],
                          max_states=max_states)
    out = onnx.ModelProto()
    out.CopyFrom(src)
    del out.graph.node[:]
    out.graph.node.extend(const + [active[i] for i in order])
    return out, plan_activation_arena(out, reorder=False, shapes=shapes)


def _node_name(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"{n.op_type}_{i}"




__all__ = ["TFLM_ALIGN", "ArenaPlan", "Buffer", "plan_activation_arena", "greedy_by_size", "peak_live", "lifetimes"]
