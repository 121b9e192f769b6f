"""Weight-only storage: the `w8` and `w16` candidates of `edgeslim optimize`.

Weight-only storage keeps the compute in FP32 and only shrinks the file: a weight becomes an int8 (or
fp16) initializer followed by `Cast` (and `Mul` by a per-channel scale). ONNX Runtime constant-folds that
chain back to an FP32 initializer when the session loads, so inference speed is unchanged, whereas a
`DequantizeLinear` on the weight is deliberately not folded and costs speed on every run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.graph import all_nodes, graphs
from edgeslim.onnxkit.quant import sqnr_db

# (op type, input index) -> axes kept in the scale (None: per-tensor). Negative axes count from the end.
WEIGHT_AXES: dict[tuple[str, int], tuple[int, ...] | None] = {
    ("Conv", 1): (0,), ("ConvTranspose", 1): (1,), ("MatMul", 1): (-1,), ("Gemm", 1): None,
    ("LSTM", 1): (0, 1), ("LSTM", 2): (0, 1), ("GRU", 1): (0, 1), ("GRU", 2): (0, 1),
    ("RNN", 1): (0, 1), ("RNN", 2): (0, 1), ("Gather", 0): (0,), ("Einsum", 1): None,
}


def _weight_axes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Initializer name -> scale axes, for initializers read as weights by Conv/MatMul/Gemm/LSTM/...

    Per-tensor (None) when consumers disagree. Gemm's axis depends on transB.
    """
    out: dict[str, tuple[int, ...] | None] = {}
    seen: set[str] = set()
    for n in all_nodes(model.graph):
        for i, name in enumerate(n.input):
            key = (n.op_type, i)
            if key not in WEIGHT_AXES:
                continue
            axes = WEIGHT_AXES[key]
            if n.op_type == "Gemm":
                trans = next((a.i for a in n.attribute if a.name == "transB"), 0)
                axes = (0,) if trans else (1,)
            if name in seen and out.get(name) != axes:
                axes = None
            out[name] = axes
            seen.add(name)
    return out


def weight_only(
    model: onnx.ModelProto, kind: str = "int8", min_elements: int = 1024, skip: set[str] | None = None,
    fp16_below_db: float = 0.0, rounded: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, int]:
    """Store large FP32 weights as int8 (symmetric, per-channel) or fp16, decoded by Cast(+Mul) nodes.

    Every float32 initializer of at least `min_elements` elements is converted; with int8, those read
    as weights (see WEIGHT_AXES) become int8 and the others fp16. `skip` names initializers to leave alone (weights
    of excluded ops). With int8, a weight whose int8 SQNR (dB, weight vs its dequantized self) is under
    `fp16_below_db` is stored as fp16 instead. `rounded` ({initializer: the same weight on the int8 grid}, e.g.
    GPTQ's: `quant.gptq.by_initializer`) gives those weights their int8 codes (the decode is the same).
    Returns (new model, number of initializers converted).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    axes_of = _weight_axes(m) if kind == "int8" else {}
    total = 0
    # Subgraph initializers too (ORT folds weights into If/Loop bodies); children first, as rewriting a
    # node list copies its nodes and would orphan subgraphs visited later.
    for g in reversed(list(graphs(m.graph))):
        total += _weight_only_graph(g, kind, axes_of, min_elements, skip or set(), fp16_below_db, rounded or {})
    return m, total


def _weight_only_graph(
    g: onnx.GraphProto, kind: str, axes_of: dict[str, tuple[int, ...] | None], min_elements: int, skip: set[str],
    fp16_below_db: float, rounded: dict[str, np.ndarray],
) -> int:
    new_inits, new_nodes, drop = [], [], set()
    for t in g.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or t.name in skip:
            continue
        w = numpy_helper.to_array(t)
        if w.size < min_elements or not np.isfinite(w).all():
            continue
        name = t.name
        q = scale = None
        if kind == "int8" and name in axes_of:  # other large float tensors (not weights of known ops): fp16
            src = rounded.get(name)
            q, scale = _int8(w if src is None or src.shape != w.shape else src, axes_of[name])
            if fp16_below_db > 0 and sqnr_db(w, q * scale) < fp16_below_db:
                q = None
        if q is None:
            if np.abs(w).max() > 65000:
                continue
            new_inits.append(numpy_helper.from_array(w.astype(np.float16), name + "__fp16"))
            new_nodes.append(helper.make_node("Cast", [name + "__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                              name=name + "__decode"))
        else:
            assert scale is not None
            new_inits += [numpy_helper.from_array(q, name + "__q8"), numpy_helper.from_array(scale, name + "__scale")]
            new_nodes += [
                helper.make_node("Cast", [name + "__q8"], [name + "__f"], to=onnx.TensorProto.FLOAT,
                                 name=name + "__cast"),
                helper.make_node("Mul", [name + "__f", name + "__scale"], [name], name=name + "__decode"),
            ]
        drop.add(name)
    if not drop:
        return 0
    inits = [t for t in g.initializer if t.name not in drop] + new_inits
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [v for v in g.input if v.name not in drop]  # IR < 4 lists initializers as inputs too
    del g.input[:]
    g.input.extend(inputs)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return len(drop)


def _int8(w: np.ndarray, keep: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of `w` with one scale per index of the `keep` axes (per-tensor if None)."""
    red = tuple(range(w.ndim)) if keep is None else tuple(
        a for a in range(w.ndim) if a not in {k % w.ndim for k in keep})
    amax = np.abs(w).max(axis=red, keepdims=True) if red else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale
