"""Operator order search: a topological order of the graph that lowers the peak activation memory.

On a chain every order is the same; where a graph branches (residual shortcuts, parallel heads) the
order in which branches run decides which tensors are alive together. We minimise the peak of the
bytes alive at one step (sum of live buffers) with a best-first search over sets of executed nodes
(a bottleneck shortest path: the first complete set popped has the minimal peak). A greedy order (at
each step the ready node that keeps the live bytes lowest) is tried first: when it reaches the lower
bound (the largest inputs + outputs of one node) it is optimal and the search is skipped
("greedy=bound"); the search stops at `max_states` expansions and then keeps the greedy order.
Sizes in bytes.
"""

from __future__ import annotations

import heapq

import onnx


def _graph(nodes: list[onnx.NodeProto], root: dict[str, str], inputs: list[str]):
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
    preds = [0] * len(nodes)  # bitmask of predecessor nodes
    readers: dict[str, int] = {}  # buffer root -> bitmask of reading nodes
    new: list[list[str]] = [[] for _ in nodes]  # buffers a node creates
    touched: list[set[str]] = [set() for _ in nodes]
    for i, n in enumerate(nodes):
        for t in n.input:
            if t in producer:
                preds[i] |= 1 << producer[t]
            if t in root:
                readers[root[t]] = readers.get(root[t], 0) | (1 << i)
                touched[i].add(root[t])
        for o in n.output:
            if o in root and root[o] == o:
                new[i].append(o)
                touched[i].add(o)
    start = {root[t] for t in inputs if t in root}
    return preds, readers, new, touched, start


def best_order(nodes: list[onnx.NodeProto], root: dict[str, str], size: dict[str, int], inputs: list[str],
               outputs: list[str], max_states: int = 5000) -> tuple[list[int], str]:
    """(order as node indices, "greedy=bound" | "exact" | "greedy"); the graph order if nothing is lower."""
    n = len(nodes)
    preds, readers, new, touched, start = _graph(nodes, root, inputs)
    keep = {root[t] for t in outputs if t in root}
    full = (1 << n) - 1

    def step(done: int, live: int, v: int) -> tuple[int, int]:
        """(bytes alive while v runs, bytes alive after) given executed set `done`."""
        during = live + sum(size[b] for b in new[v])
        after_done = done | (1 << v)
        freed = sum(size[b] for b in touched[v] if b not in keep and readers.get(b, 0) & ~after_done == 0)
        return during, during - freed

    live0 = sum(size[b] for b in start)
    orig_peak, live = live0, live0
    done = 0
    for v in range(n):
        during, live = step(done, live, v)
        orig_peak = max(orig_peak, during)
        done |= 1 << v

    # greedy first; if it meets the lower bound (every node needs its inputs and outputs at once) it is optimal
    done, live, order_g, greedy_peak = 0, live0, [], live0
    while done != full:
        cands = []
        for v in range(n):
            if not (done >> v & 1) and not (preds[v] & ~done):
                during, after = step(done, live, v)
                cands.append((during, after, v))
        during, after, v = min(cands)
        greedy_peak, live, done = max(greedy_peak, during), after, done | (1 << v)
        order_g.append(v)
    bound = max([live0] + [sum(size[b] for b in touched[v]) for v in range(n)])
    if greedy_peak <= bound:
        return (order_g if greedy_peak < orig_peak else list(range(n))), "greedy=bound"

    best: dict[int, int] = {0: live0}
    heap: list[tuple[int, int, int, tuple[int, ...]]] = [(live0, 0, live0, ())]
    expanded = 0
    while heap and expanded < max_states:
        peak, done, live, order = heapq.heappop(heap)
        if done == full:
            return (list(order) if peak < orig_peak else list(range(n))), "exact"
        if peak >= greedy_peak:  # nothing left can beat the greedy order
            break
        expanded += 1
        for v in range(n):
            if done >> v & 1 or preds[v] & ~done:
                continue
            during, after = step(done, live, v)
            p, nd = max(peak, during), done | (1 << v)
            if p < best.get(nd, 1 << 62):
                best[nd] = p
                heapq.heappush(heap, (p, nd, after, (*order, v)))
    method = "exact" if expanded < max_states else "greedy"  # search ended early: greedy is optimal
    return (order_g if greedy_peak < orig_peak else list(range(n))), method
