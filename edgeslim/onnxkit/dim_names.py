"""Symbolic shapes written into the file so ONNX Runtime can prove elementwise inputs equal (issue 23).

ONNX Runtime's NCHWc transformer (CPU, ORT_ENABLE_ALL) keeps an Add / Sum / Mul of two NCHWc tensors in the
blocked layout only when it can show the two inputs have one shape: it tracks dims through its own convs, and
falls back on the dims ONNX shape inference gave the two inputs (equal numbers, or equal `dim_param` names). A
CNN that takes any image size (symbolic H and W) defeats both where the two branches of a residual Add meet
after a layout break (a squeeze-excitation Mul is done in NCHW): ONNX's own inference leaves the dims unknown.
ORT then adds each residual with three Reshapes around a plain Add, where with equal shapes it fuses the Add into
the NCHWc Conv before it (its ConvSum fusion). PP-OCR cls's last stage: 145 -> 117 kernels per call.

`name_dims` (rule `dim_names` of `cheap_ops.cheapen_ops`) runs ONNX Runtime's symbolic shape inference WITHOUT
auto_merge (so no two dims are ever assumed equal: every name is an expression of the input dims that the
inference derived, e.g. `floor(x_d2/2 - 1/2) + 1`) and writes a `value_info` for each input of an elementwise
Add / Sum / Mul whose rank-4 inputs come out with one shape that has a symbolic dim. Graph inputs whose dims have
no name or the name `?` get a distinct name per input and axis in the copy the inference runs on (two `?` would
otherwise be taken as one size); the file's own input declarations are not changed. Each derived expression is
written under a short name of its own (`dn0`, `dn1`, ...; a prefix no dim name of the file starts with), so equal
names still mean equal expressions and the file grows by tens of bytes per tensor. Nothing else in the graph
changes: the file computes the same thing and takes the same input shapes. A graph the inference cannot type
(or one with If/Loop bodies) is left alone.
"""

from __future__ import annotations

import onnx
from onnx import helper

from edgeslim.onnxkit.static_shapes import ort_symbolic_infer

ELEMENTWISE = ("Add", "Sum", "Mul")  # ops whose equal-shaped NCHWc inputs ONNX Runtime keeps blocked


def _unnamed(d: onnx.TensorShapeProto.Dimension) -> bool:
    return not d.HasField("dim_value") and (not d.HasField("dim_param") or d.dim_param in ("", "?"))


def _given(model: onnx.ModelProto) -> set[str]:
    """Every dim name the file itself declares (inputs, outputs, value_info), '?' and '' left out."""
    g = model.graph
    return {d.dim_param for v in (*g.input, *g.output, *g.value_info) for d in v.type.tensor_type.shape.dim
            if d.HasField("dim_param") and d.dim_param not in ("", "?")}


def _prefix(given: set[str]) -> str:
    """A prefix that no declared dim name starts with: the names written here never meet the file's own."""
    p = "dn"
    while any(n.startswith(p) for n in given):
        p = "_" + p
    return p


def _inferred(model: onnx.ModelProto, wanted: list[str],
              prefix: str) -> dict[str, tuple[int, list[int | str]]] | None:
    """Tensor name -> (element type, dims: int or a symbol) from ONNX Runtime's symbolic shape inference
    (auto_merge off) of a copy cut to the nodes that `wanted` tensors depend on (a model's tail, e.g. a
    Shape -> Concat -> Reshape flatten, can trip the inference) and whose unnamed input dims got distinct names;
    None where it fails."""
    from edgeslim.onnxkit.graph import remove_dead

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(wanted))
    remove_dead(m)
    for i, vi in enumerate(m.graph.input):
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if _unnamed(d):
                d.dim_param = f"{prefix}i{i}_{k}"
    del m.graph.value_info[:]
    try:
        inf = ort_symbolic_infer(m, auto_merge=False)
    except Exception:  # noqa: BLE001 -- a graph it cannot type keeps the file as it is
        return None
    if inf is None:
        return None
    out: dict[str, tuple[int, list[int | str]]] = {}
    for vi in inf.graph.value_info:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims: list[int | str] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                break  # an unknown dim: not a shape to write
        else:
            out[vi.name] = (t.elem_type, dims)
    return out


def name_dims(model: onnx.ModelProto) -> int:
    """Write (in place) `value_info` shapes with symbolic dims for the inputs of main-graph Add / Sum / Mul nodes
    whose inputs are all rank 4 with one shape holding at least one symbolic dim (module docstring). Returns
    how many elementwise nodes got their inputs' shapes written; 0 (file untouched) when none or when the graph
    has subgraphs or cannot be typed."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return 0
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    cand = [n for n in g.node if n.op_type in ELEMENTWISE and n.domain in ("", "ai.onnx") and len(n.input) >= 2
            and not any(x in consts for x in n.input)]  # a weight's dequantization Mul is not one of them
    if not cand:
        return 0
    given = _given(model)
    prefix = _prefix(given)
    shapes = _inferred(model, [x for n in cand for x in n.input], prefix)
    if not shapes:
        return 0
    write: dict[str, tuple[int, list[int | str]]] = {}
    done = 0
    for n in cand:
        got = [shapes.get(x) for x in n.input]
        if any(s is None or len(s[1]) != 4 for s in got):
            continue
        first = got[0]
        assert first is not None
        if any(s != first for s in got[1:]) or not any(isinstance(d, str) for d in first[1]):
            continue
        for x in n.input:
            write[x] = first
        done += 1
    if not write:
        return 0
    keep = [v for v in g.value_info if v.name not in write]
    del g.value_info[:]
    g.value_info.extend(keep)
    inputs = {i.name for i in g.input} | {t.name for t in g.initializer} | {o.name for o in g.output}  # typed already
    short: dict[str, str] = {}  # an inferred expression (tens of characters) -> a short name, one per expression

    def nm(d: int | str) -> int | str:
        return d if isinstance(d, int) or d in given else short.setdefault(d, f"{prefix}{len(short)}")

    for name, (elem, dims) in write.items():
        if name not in inputs:
            g.value_info.append(helper.make_tensor_value_info(name, elem, [nm(d) for d in dims]))
    return done
