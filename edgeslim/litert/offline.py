"""An offline memory plan in a `.tflite`'s metadata (`OfflineMemoryAllocation`), which TFLite Micro uses as is.

TFLite Micro's greedy planner places buffers largest first, which can leave gaps; and it never lets two
tensors share memory. Here edgeslim plans the head itself:
- in place: the output of an elementwise operator (ADD/SUB/MUL of equal shapes, unary activations,
  requantisation) shares the buffer of an input of the same size whose last reader it is (element i is
  read before it is written, in TFLite Micro's reference kernels and CMSIS-NN's alike), and a RESHAPE /
  SQUEEZE / EXPAND_DIMS output shares its dying input's buffer (TFLite Micro skips the copy when both
  are the same memory); graph inputs and outputs are never shared;
- placement: several orders of first fit (by size, by lifetime, by start, by size x lifetime, and
  `RESTARTS` seeded random perturbations of the size order) are tried and the lowest head kept.
The plan is written only when its head is below what TFLite Micro's own planner would give. The metadata
buffer is int32: [version 0, subgraph 0, number of tensors, one arena offset per tensor (-1: planned at
run time)]. Sizes in bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from edgeslim.litert import tfgraph as tg
from edgeslim.onnxkit.liveness import TFLM_ALIGN, Buffer, lifetimes, place_in_order

METADATA = "OfflineMemoryAllocation"
IN_PLACE = {"ADD", "SUB", "MUL", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "LOGISTIC", "TANH", "HARD_SWISH",
            "QUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
RESTARTS = 200  # random perturbations of the largest-first order tried (seeded: the plan is reproducible)


def _aliases(model) -> dict[str, str]:
    """tensor -> buffer root, with in-place ADD outputs sharing a dying input's buffer."""
    sg = model.subgraphs[0]
    io = {int(t) for t in list(sg.inputs) + list(sg.outputs)}
    last: dict[int, int] = {}
    for i, op in enumerate(sg.operators):
        for t in tg.activations(model, sg, op.inputs):
            last[t] = i
    root: dict[str, str] = {}

    def find(t: str) -> str:
        while root.get(t, t) != t:
            t = root[t]
        return t

    for i, op in enumerate(sg.operators):
        if tg.op_name(model, op) not in IN_PLACE or len(op.outputs) != 1:
            continue
        out = int(op.outputs[0])
        size = tg.tensor_bytes(sg.tensors[out])
        acts = tg.activations(model, sg, op.inputs)
        if tg.op_name(model, op) in ("ADD", "SUB", "MUL") and len({tuple(sg.tensors[t].shape) for t in acts}
                                                                     | {tuple(sg.tensors[out].shape)}) != 1:
            continue  # broadcasting: element i of the output is not element i of each input
        for t in acts[:1] if tg.op_name(model, op) in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS") else acts:
            if (last.get(t) == i and t not in io and out not in io and list(op.inputs).count(t) == 1
                    and tg.tensor_bytes(sg.tensors[t]) == size):
                root[str(out)] = find(str(t))
                break
    return root


def _noisy(noise: dict[str, float]) -> Callable[[Buffer], tuple]:
    """Largest first with each size scaled by a random factor in [0.5, 1.5]."""
    return lambda b: (-b.size * noise[b.name], b.first)


def plan_offline(model) -> tuple[int, dict[int, int]]:
    """(head bytes, tensor index -> arena offset) of edgeslim's own plan for the file's operator order."""
    sg = model.subgraphs[0]
    nodes, root, size, ins, outs = tg._fake_nodes(model, sg)
    alias = _aliases(model)
    for t in list(root):
        r = t
        while alias.get(r, r) != r:
            r = alias[r]
        root[t] = r
    size = {r: max(size[t] for t in root if root[t] == r) for r in set(root.values())}
    keys: list[Callable[[Buffer], tuple]] = [
        lambda b: (-b.size, -int(b.name)), lambda b: (-(b.last - b.first), -b.size),
        lambda b: (b.first, -b.size), lambda b: (-b.size * (b.last - b.first + 1), b.first)]
    rng = np.random.default_rng(0)
    for _ in range(RESTARTS):
        keys.append(_noisy({r: float(rng.uniform(0.5, 1.5)) for r in size}))
    bufs = lifetimes(nodes, list(range(len(nodes))), root, size, ins, outs, TFLM_ALIGN)
    best: tuple[int, dict[str, int]] | None = None
    for key in keys:
        head = place_in_order(bufs, key)
        if best is None or head < best[0]:
            best = (head, {b.name: b.offset for b in bufs})
    assert best is not None
    head, offset = best
    return head, {int(t): offset[r] for t, r in root.items()}


def with_offline_plan(model, offsets: dict[int, int]):
    """A copy of `model` carrying `offsets` as TFLite Micro's offline plan (other tensors: -1, planned online)."""
    from ai_edge_litert import schema_py_generated as s

    m = copy.copy(model)
    m.buffers = list(model.buffers)
    n = len(model.subgraphs[0].tensors)
    data = np.array([0, 0, n] + [offsets.get(i, -1) for i in range(n)], dtype="<i4")
    b = s.BufferT()
    b.data = np.frombuffer(data.tobytes(), dtype=np.uint8).copy()
    m.buffers.append(b)
    meta = s.MetadataT()
    meta.name, meta.buffer = METADATA, len(m.buffers) - 1
    m.metadata = [x for x in (model.metadata or []) if x.name not in (METADATA, METADATA.encode())] + [meta]
    return m


def apply(model) -> tuple[object, int, bool]:
    """(model, planned head bytes, whether an offline plan was written): the plan goes in only when it beats
    TFLite Micro's greedy planner on this file."""
    greedy = tg.plan(model).head_bytes
    head, offsets = plan_offline(model)
    if head >= greedy:
        return model, greedy, False
    return with_offline_plan(model, offsets), head, True


__all__ = ["apply", "plan_offline", "with_offline_plan", "METADATA"]
