"""Buffer lifetimes and placement for a node execution order: the memory-planning steps both the ONNX arena
planner (`edgeslim.measure.arena`) and the `.tflite` rewrites (`edgeslim.litert`) build on. Sizes in bytes,
steps are positions in the execution order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

TFLM_ALIGN = 16  # TFLite Micro's kBufferAlignment (bytes)


@dataclass
class Buffer:
    """One arena buffer (a tensor and the views/in-place results that share it)."""

    name: str
    size: int  # bytes
    first: int  # step of the producer (0 for graph inputs)
    last: int  # step of the last reader (end for graph outputs)
    offset: int = -1
    members: list[str] = field(default_factory=list)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


def lifetimes(nodes: list[onnx.NodeProto], order: list[int], root: dict[str, str], size: dict[str, int],
              inputs: list[str], outputs: list[str], align: int = 1) -> list[Buffer]:
    """Buffers with [first, last] steps for the node execution `order` (indices into `nodes`)."""
    end = max(len(order) - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for t, r in root.items():
        members.setdefault(r, []).append(t)
    for t in inputs:
        if t in root:
            first[root[t]] = 0
    for step, i in enumerate(order):
        n = nodes[i]
        for t in n.input:
            if t in root:
                r = root[t]
                last[r] = max(last.get(r, step), step)
        for t in n.output:
            if t in root:
                r = root[t]
                first.setdefault(r, step)
                last[r] = max(last.get(r, step), step)
    for t in outputs:
        if t in root:
            last[root[t]] = end
    return [Buffer(r, _align(size[r], align), first.get(r, 0), last.get(r, first.get(r, 0)), members=members[r])
            for r in size]


def place_in_order(bufs: list[Buffer], key: Callable[[Buffer], Any]) -> int:
    """Place buffers one by one in `key` order, each at the lowest offset free during its life (the greedy
    step every planner here shares; they differ in the order). Sets `offset`; returns the arena bytes."""
    placed: list[Buffer] = []
    for b in sorted(bufs, key=key):
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        off = 0
        for p in live:
            if p.offset - off >= b.size:
                break
            off = max(off, p.offset + p.size)
        b.offset = off
        placed.append(b)
    return max((b.offset + b.size for b in bufs), default=0)


def greedy_by_size(bufs: list[Buffer]) -> int:
    """Assign offsets largest-first at the lowest gap free during each buffer's life. Returns arena bytes."""
    return place_in_order(bufs, key=lambda b: (-b.size, b.first, b.name))


def peak_live(bufs: list[Buffer]) -> int:
    """Largest sum of buffer sizes alive at the same step (bytes)."""
    if not bufs:
        return 0
    steps = max(b.last for b in bufs) + 1
    live = np.zeros(steps + 1, dtype=np.int64)
    for b in bufs:
        live[b.first] += b.size
        live[b.last + 1] -= b.size
    return int(np.cumsum(live).max())

