"""Fold shape reads of dimensions that are static into constants.

A traced export (and many third-party files) compute reshape targets and slice bounds at run time from
`Shape` -> `Gather` chains, even where the dimension read never changes (the channel count, a fixed frame
length): only the batch axis is symbolic. ONNX Runtime folds a `Shape` only when every dimension of its input
is known, so these chains run on every call; on a small streaming model (a VAD: about 110 us per call) they are
a large share of the time. `fold_static_shapes` runs ONNX shape inference, then replaces

- a `Shape` whose (sliced, `start`/`end`) dims are all static, and
- a `Gather` of constant indices from a `Shape` output, where the gathered dims are static,

by int64 constants; ONNX Runtime's own constant folding then folds what hangs off them (Unsqueeze, Concat,
arithmetic). Nodes left without readers are removed. Dims shape inference leaves symbolic are never touched,
so the file keeps every input shape it accepted. Only the main graph is rewritten (If/Loop bodies read the
new constants from the outer scope as they read the old names).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import attr
from edgeslim.onnxkit.graph import remove_dead

Dim = int | str | None  # a known size, a symbol (equal names: equal sizes), or unknown


def ort_symbolic_infer(model: onnx.ModelProto, auto_merge: bool) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference of `model` (a typed copy; None or an exception where it fails).
    Where it cannot type every tensor it saves the model (weights as a side file, tens of MB) to
    sym_shape_infer_temp.onnx in the working directory before raising: it runs in a scratch directory."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with tempfile.TemporaryDirectory() as scratch:
        here = os.getcwd()
        os.chdir(scratch)
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=auto_merge)
        finally:
            os.chdir(here)


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Tensor name -> its dims: an int where known, the symbol's name where ONNX Runtime's symbolic shape
    inference (auto_merge) tracks it (two dims of one name have one size at run time), None where unknown. ORT's
    inference carries the static dims through Slice bounds and Reshape targets computed from the batch size,
    where ONNX's own inference gives up; it is the fallback. {} when neither can type the graph."""
    try:
        inf = ort_symbolic_infer(model, auto_merge=True)
        if inf is None:
            raise ValueError("no result")
    except Exception:  # best effort: a graph it cannot type falls back to ONNX's inference  # noqa: BLE001
        try:
            inf = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # a graph neither can type keeps its Shape nodes  # noqa: BLE001
            return {}
    out: dict[str, list[Dim]] = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for init in inf.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _known(sym: dict[str, list[Dim]]) -> dict[str, list[int | None]]:
    """`symbolic_dims`' map without the symbols: None where a dim is not a known number."""
    return {k: [d if isinstance(d, int) else None for d in v] for k, v in sym.items()}


def _const(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    vals = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return vals


def _shape_dims(n: onnx.NodeProto, dims: list[int | None]) -> list[int | None]:
    """The dims a Shape node returns (its `start`/`end` attributes applied, opset 15)."""
    r = len(dims)
    start, end = int(attr(n, "start", 0)), attr(n, "end", None)
    start = max(0, start + r if start < 0 else start)
    stop = r if end is None else max(0, int(end) + r if int(end) < 0 else int(end))
    return dims[start:min(stop, r)]


def fold_static_shapes(model: onnx.ModelProto, sym: dict[str, list[Dim]] | None = None) -> int:
    """Replace static Shape / Shape->Gather reads of `model` (in place) by constants; returns how many.
    `sym`: `symbolic_dims(model)` when the caller has it (the inference takes seconds on a large detector;
    the dims it gives stay true after this fold, so `view_chains.collapse_views` can take them too)."""
    g = model.graph
    dims = _known(symbolic_dims(model) if sym is None else sym)
    if not dims:
        return 0
    consts = _const(g)
    shape_of: dict[str, list[int | None]] = {}  # Shape output -> the dims it returns
    folded: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type == "Shape" and n.input and n.input[0] in dims:
            sd = _shape_dims(n, dims[n.input[0]])
            shape_of[n.output[0]] = sd
            if sd and all(d is not None for d in sd):
                folded[n.output[0]] = np.array(sd, np.int64)
        elif (n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in shape_of and n.input[1] in consts
              and int(attr(n, "axis", 0)) == 0):
            sd, idx = shape_of[n.input[0]], np.asarray(consts[n.input[1]]).astype(np.int64)
            picked = [sd[int(i)] if -len(sd) <= int(i) < len(sd) else None for i in idx.reshape(-1)]
            if idx.ndim == 1:
                shape_of[n.output[0]] = picked  # a gathered shape vector: later Gathers read it too
            if picked and all(d is not None for d in picked):
                folded[n.output[0]] = np.array(picked, np.int64).reshape(idx.shape)
    if not folded:
        return 0
    keep = [n for n in g.node if not (len(n.output) == 1 and n.output[0] in folded)]
    del g.node[:]
    g.node.extend(keep)
    have = {t.name for t in g.initializer}
    for name, v in folded.items():
        if name not in have:
            g.initializer.append(numpy_helper.from_array(v, name))
    graph_outputs = {o.name for o in g.output}
    for name in folded.keys() & graph_outputs:  # an output must be produced by a node
        g.initializer.remove(next(t for t in g.initializer if t.name == name))
        g.node.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(folded[name], name)))
    remove_dead(model)
    return len(folded)
