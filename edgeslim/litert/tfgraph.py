"""A `.tflite` flatbuffer as an editable graph, and TFLite Micro's memory plan of it.

TFLite Micro runs a subgraph's operators in the flatbuffer's order and plans every non-constant tensor
into the arena's head with its `GreedyMemoryPlanner`: a tensor lives from the operator that writes it
(step 0 for graph inputs) to the last operator that reads it (the end for graph outputs); buffers are
placed largest first at the lowest offset free during their life, aligned to 16 bytes. `plan` reproduces
that on the file's own order (or another one) and also gives the per-operator live bytes (the memory
"skyline"). `tail_estimate` is a model of the persistent tail (tensor and node structures, per-channel
requantisation data), calibrated on the recorded breakdowns of TFLite Micro. Sizes in bytes, counts in
multiply-accumulates (MACs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeslim.onnxkit.liveness import TFLM_ALIGN, Buffer, lifetimes, peak_live, place_in_order

_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 4, 17: 1}  # TensorType -> bytes
# persistent tail (TFLite Micro 2026, 64-bit host), least-squares fit to the recorded tails of 9 files
# (ResNet-8, DS-CNN, MobileNetV1, plain and patched; residuals within 105 bytes): see `tail_estimate`
TAIL_FIXED, TAIL_PER_OP, TAIL_PER_CONV, TAIL_PER_TENSOR, TAIL_PER_CHANNEL = 670, 142, 152, 28, 8


def load(data: bytes):
    """The flatbuffer as the schema's object API (`ModelT`)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    from edgeslim.errors import EdgeslimError

    try:
        m = fu.read_model_from_bytearray(bytearray(data))
    except Exception as e:  # noqa: BLE001 - the flatbuffer reader raises whatever the bytes provoke
        raise EdgeslimError(f"not a readable .tflite flatbuffer ({type(e).__name__})") from None
    if not m.subgraphs or m.buffers is None:
        raise EdgeslimError("not a readable .tflite flatbuffer (no subgraph or buffers)")
    return m


def dump(model) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils as fu

    return bytes(fu.convert_object_to_bytearray(model))


def op_name(model, op) -> str:
    from ai_edge_litert.tools import flatbuffer_utils as fu

    return str(fu.opcode_to_name(model, op.opcodeIndex))


def tensor_bytes(t) -> int:
    shape = [int(s) for s in (t.shape if t.shape is not None else [])]
    return int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE.get(int(t.type), 4)


def constant(model, sg, ti: int) -> bool:
    """A tensor with data in its buffer (weights, shapes, paddings)."""
    t = sg.tensors[ti]
    data = model.buffers[t.buffer].data if 0 <= t.buffer < len(model.buffers) else None
    return data is not None and len(data) > 0 or bool(getattr(t, "isVariable", False))


def activations(model, sg, ti_list) -> list[int]:
    return [int(t) for t in ti_list if t >= 0 and not constant(model, sg, int(t))]


def macs(model, sg, op) -> int:
    """Multiply-accumulates of one operator (convolutions and fully connected layers; others 0)."""
    name = op_name(model, op)
    if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
        return 0
    out = sg.tensors[op.outputs[0]]
    w = [int(s) for s in sg.tensors[op.inputs[1]].shape]
    n_out = int(np.prod(out.shape))
    if name == "CONV_2D":  # weights [cout, kh, kw, cin]
        return n_out * w[1] * w[2] * w[3]
    if name == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, cout]
        return n_out * w[1] * w[2]
    return n_out * w[-1]  # FULLY_CONNECTED weights [out, in]


@dataclass
class TflitePlan:
    """TFLite Micro's head plan for one operator order (bytes)."""

    head_bytes: int  # greedy-by-size arena of the activations (what the recorded `head` holds)
    peak_live_bytes: int  # largest sum of tensors alive at one step (a lower bound for the order)
    skyline: list[int]  # bytes alive while each operator runs, in execution order
    ops: list[str]  # operator names in execution order
    tail_estimate_bytes: int = 0
    buffers: list[Buffer] = field(default_factory=list)


def _fake_nodes(model, sg):
    """The graph as ONNX-like nodes (names = tensor indices) for the shared planner and order search."""
    from onnx import helper

    nodes, root, size = [], {}, {}
    for i, op in enumerate(sg.operators):
        ins = [str(t) for t in activations(model, sg, op.inputs)]
        outs = [str(t) for t in op.outputs if t >= 0]
        nodes.append(helper.make_node("Op", ins, outs, name=str(i)))
        for t in ins + outs:
            root[t] = t
            size[t] = tensor_bytes(sg.tensors[int(t)])
    for t in list(sg.inputs) + list(sg.outputs):
        root[str(t)], size[str(t)] = str(t), tensor_bytes(sg.tensors[t])
    return nodes, root, size, [str(t) for t in sg.inputs], [str(t) for t in sg.outputs]


def plan(model, order: list[int] | None = None, subgraph: int = 0) -> TflitePlan:
    """The head TFLite Micro's greedy planner gives `order` (operator indices; the file's order by default)."""
    sg = model.subgraphs[subgraph]
    nodes, root, size, ins, outs = _fake_nodes(model, sg)
    order = list(range(len(nodes))) if order is None else order
    bufs = lifetimes(nodes, order, root, size, ins, outs, TFLM_ALIGN)
    head = place(bufs)
    steps = max(len(order), 1)
    sky = [0] * steps
    for b in bufs:
        for s in range(b.first, min(b.last, steps - 1) + 1):
            sky[s] += b.size
    return TflitePlan(head, peak_live(bufs), sky, [op_name(model, sg.operators[i]) for i in order],
                      tail_estimate(model, subgraph), bufs)


def place(bufs: list[Buffer]) -> int:
    """TFLite Micro's greedy placement: largest first (equal sizes: the later tensor first, as its planner
    orders them), each at the lowest offset free during its life. Returns the head bytes."""
    return place_in_order(bufs, key=lambda b: (-b.size, -int(b.name)))


def tail_estimate(model, subgraph: int = 0) -> int:
    """Persistent tail of TFLite Micro (bytes), estimated: per operator, per tensor, and per output channel
    of each convolution (its requantisation multipliers and shifts)."""
    sg = model.subgraphs[subgraph]
    total = TAIL_FIXED + TAIL_PER_TENSOR * len(sg.tensors)
    for op in sg.operators:
        if op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            total += TAIL_PER_CONV + TAIL_PER_CHANNEL * int(sg.tensors[op.outputs[0]].shape[-1])
        else:
            total += TAIL_PER_OP
    return total


def compact(model, subgraph: int = 0) -> None:
    """Drop tensors no operator or graph input/output references (they still cost tail), renumbering."""
    sg = model.subgraphs[subgraph]
    used = sorted({int(t) for op in sg.operators for t in list(op.inputs) + list(op.outputs) if t >= 0}
                  | {int(t) for t in sg.inputs} | {int(t) for t in sg.outputs})
    new = {old: i for i, old in enumerate(used)}
    sg.tensors = [sg.tensors[i] for i in used]
    for op in sg.operators:
        op.inputs = [new[int(t)] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [new[int(t)] for t in op.outputs]
    sg.inputs = [new[int(t)] for t in sg.inputs]
    sg.outputs = [new[int(t)] for t in sg.outputs]


__all__ = ["TflitePlan", "load", "dump", "plan", "macs", "op_name", "tensor_bytes", "tail_estimate", "compact",
           "constant", "activations"]
