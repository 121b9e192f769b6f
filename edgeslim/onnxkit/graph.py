"""Walks over an ONNX graph and its subgraphs, and the small edits every ONNX job needs.

Real exports keep weights and whole layers inside `If`/`Loop`/`Scan` bodies, so every walk here goes
into subgraphs: `graphs` yields the main graph and every body below it, `all_nodes` their nodes. A
tensor read only inside a body is still "used": every rewrite that removes, fuses or renames asks
`consumers` (an `If` reads what its branches read from outside) and renames with `rename_reads`, which
follows the name into the bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx

from edgeslim.untrusted import outer_reads, sort_topologically  # noqa: F401 - part of this toolkit's API

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def bodies(n: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs held by node `n`'s attributes (If branches, Loop/Scan bodies), one level down."""
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`g` and every subgraph (If/Loop/Scan bodies) below it, depth first."""
    yield g
    for n in g.node:
        for sg in bodies(n):
            yield from graphs(sg)


def all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `g` and of its subgraphs."""
    for sg in graphs(g):
        yield from sg.node


def consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes of `g` that read it: as an input, or from inside their subgraphs (an
    `If`/`Loop`/`Scan` node reads what its bodies read from the scope around them, `outer_reads`). The one
    answer to "who uses this tensor" for every rewrite that removes, fuses or renames: a tensor read only
    inside an `If` branch has its `If` as reader (PP-OCRv4 rec re-exported from PyTorch reads Slice outputs
    only inside `If` bodies; issue 23)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in dict.fromkeys([*n.input, *sorted(outer_reads(n))]):
            if i:
                out.setdefault(i, []).append(n)
    return out


def used_names(g: onnx.GraphProto) -> set[str]:
    """Every tensor name of `g`'s scope that is read: by a node of `g`, from inside a subgraph, or as an
    output of `g`."""
    return set(consumers(g)) | {o.name for o in g.output}


def rename_reads(g: onnx.GraphProto, ren: dict[str, str]) -> None:
    """Rename, in place, every read of the tensors `ren` ({old: new}) by the nodes of `g` and, recursively,
    inside their subgraphs (where a body reads it from outside, or returns it as a body output), so no
    `If`/`Loop`/`Scan` body is left reading a name nothing produces. `g`'s own outputs are not renamed."""
    for n in g.node:
        rename_node_reads(n, ren)


def rename_node_reads(n: onnx.NodeProto, ren: dict[str, str]) -> None:
    """`rename_reads` for one node: its inputs and what its subgraphs read from outside."""
    if not ren:
        return
    n.input[:] = [ren.get(i, i) for i in n.input]
    for sg in bodies(n):
        local = {i.name for i in sg.input} | {t.name for t in sg.initializer} | {o for x in sg.node for o in x.output}
        inner = {k: v for k, v in ren.items() if k not in local}  # a body's own name shadows the outer one
        rename_reads(sg, inner)
        for o in sg.output:
            o.name = inner.get(o.name, o.name)


def remove_dead(model: onnx.ModelProto) -> int:
    """Drop, in place, main-graph nodes whose outputs nobody reads (subgraphs included) and unused
    initializers. Returns how many nodes were removed."""
    g = model.graph
    removed = 0
    while True:
        used = used_names(g)
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        removed += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    used = used_names(g)
    inits = [t for t in g.initializer if t.name in used]
    if len(inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)
    return removed


def op_counts(model: onnx.ModelProto, qualified: bool = False) -> dict[str, int]:
    """Operator counts over the main graph and all subgraphs, most frequent first. With `qualified`, ops
    outside the default domain are named `domain.op_type` (e.g. `com.microsoft.FusedConv`)."""
    out: dict[str, int] = {}
    for n in all_nodes(model.graph):
        name = (f"{n.domain}." if qualified and n.domain and n.domain != "ai.onnx" else "") + n.op_type
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def has_qdq(model: onnx.ModelProto) -> bool:
    """True for a QDQ-quantized model (QuantizeLinear/DequantizeLinear nodes in the main graph)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: exclusion lists and SQNR reports refer to nodes by name."""
    seen: set[str] = set()
    k = 0
    for g in graphs(model.graph):
        for n in g.node:
            if not n.name or n.name in seen:
                while f"{n.op_type}_{k}" in seen:
                    k += 1
                n.name = f"{n.op_type}_{k}"
            seen.add(n.name)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` with the intermediate tensors `names` added as graph outputs (so they can be read)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have)
    return m


def insert_before(g: onnx.GraphProto, before: dict[int, list[onnx.NodeProto]]) -> None:
    """Put, in place, the nodes `before[id(n)]` just ahead of each node `n` of `g` (keeps the graph sorted
    when they feed `n`)."""
    ordered: list[onnx.NodeProto] = []
    for n in g.node:
        ordered += before.get(id(n), [])
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)


def save(model: onnx.ModelProto, path: Path) -> int:
    """Write `model` (single file, not atomic: for work files) and return its size in bytes. Nodes are put
    in topological order first (`sort_topologically`), so every file written passes the ONNX checker."""
    sort_topologically(model.graph)
    data = model.SerializeToString()
    path.write_bytes(data)
    return len(data)
