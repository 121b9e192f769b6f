"""Per-layer structure of a stage's ONNX model: output channels kept, zero weights, weight bits.

Read from the deployed graph itself, so every stage (PyTorch or ONNX-only) is described the same way:
for each Conv / ConvTranspose / Gemm / MatMul whose weight is stored in the file (an initializer or
Constant, directly, behind a DequantizeLinear, or as weight-only storage decoded by Cast (-> Mul by a
scale) that ONNX Runtime folds at load time), the output channels (Conv: weight dim 0; Gemm/MatMul:
the output features), the fraction of stored weights that are zero (for quantized weights: equal to
the zero point) and the stored bits per weight. Layers are matched to the baseline's by node name
(torch export names nodes after module paths, which pruning keeps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BITS = {np.dtype(np.int8): 8, np.dtype(np.uint8): 8, np.dtype(np.float16): 16, np.dtype(np.float32): 32,
        np.dtype(np.float64): 64, np.dtype(np.int16): 16, np.dtype(np.int32): 32}


def _stored(g: onnx.GraphProto) -> tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto]]:
    arrays = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    arrays[n.output[0]] = numpy_helper.to_array(a.t)
    producers = {o: n for n in g.node for o in n.output}
    return arrays, producers


def _weight(name: str, arrays: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto]
            ) -> tuple[np.ndarray, int, float] | None:
    """(stored weight, bits, zero point) of a weight input, following DequantizeLinear; None if computed."""
    if name in arrays:
        w = arrays[name]
        return w, BITS.get(w.dtype, 32), 0.0
    n = producers.get(name)
    if n is not None and n.op_type == "DequantizeLinear" and n.input[0] in arrays:
        q = arrays[n.input[0]]
        zp = arrays.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        bits = 4 if q.dtype.name in ("int4", "uint4") else BITS.get(q.dtype, 8)
        if zp is not None and zp.size > 1 and q.ndim >= 1:  # per-channel zero points along axis 0
            zp = zp.reshape((-1,) + (1,) * (q.ndim - 1)) if zp.shape[0] == q.shape[0] else zp
        return q, bits, zp if zp is not None else 0.0  # type: ignore[return-value]
    if n is not None and n.op_type == "Mul":  # int8 codes decoded by Cast -> Mul (weight-only storage)
        for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            c = producers.get(a)
            if c is not None and c.op_type == "Cast" and c.input[0] in arrays and b in arrays:
                q = arrays[c.input[0]]
                return q, BITS.get(q.dtype, 32), 0.0
    if n is not None and n.op_type == "Cast" and n.input[0] in arrays:  # fp16 storage, cast at load
        w = arrays[n.input[0]]
        return w, BITS.get(w.dtype, 32), 0.0
    return None


def onnx_layers(path: Path) -> list[dict]:
    """One row per weighted layer: layer, op, out_channels, params, sparsity (fraction 0-1), weight_bits."""
    g = onnx.load(str(path)).graph
    arrays, producers = _stored(g)
    rows = []
    for i, n in enumerate(g.node):
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        got = _weight(n.input[1], arrays, producers)
        if got is None:
            continue
        w, bits, zp = got
        if n.op_type == "Conv":
            out_ch = int(w.shape[0])
        elif n.op_type == "ConvTranspose":
            out_ch = int(w.shape[1]) * next((a.i for a in n.attribute if a.name == "group"), 1)
        elif n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out_ch = int(w.shape[0] if trans_b else w.shape[-1])
        else:
            out_ch = int(w.shape[-1])
        zero = np.asarray(w).astype(np.float64) == np.asarray(zp, np.float64)
        rows.append({"layer": _layer_name(n, i), "op": n.op_type, "out_channels": out_ch, "params": int(w.size),
                     "sparsity": round(float(zero.mean()), 6) if w.size else 0.0, "weight_bits": bits})
    return rows


def _layer_name(n: onnx.NodeProto, i: int) -> str:
    """'/layer1/conv1/Conv' -> 'layer1.conv1'; unnamed nodes get their op and index."""
    name = n.name or f"{n.op_type}_{i}"
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] in WEIGHT_OPS:
        parts = parts[:-1]
    kept: list[str] = []
    for p in parts:  # '/features/features.1/Conv': a component may repeat its parent's path
        if kept and p.startswith(kept[-1] + "."):
            kept[-1] = p
        else:
            kept.append(p)
    return ".".join(kept) or name


def with_baseline(rows: list[dict], base: list[dict]) -> list[dict]:
    """Add `baseline_out_channels` and `kept` (fraction of channels kept), matching layers to the
    baseline's by name, or by position when a tool renamed the nodes (e.g. ONNX Runtime's quantizer)
    and the layer count is unchanged; the baseline's names are then used."""
    ref = {r["layer"]: r["out_channels"] for r in base}
    by_pos = len(rows) == len(base) and any(r["layer"] not in ref for r in rows)
    out = []
    for i, r in enumerate(rows):
        if by_pos and base[i]["op"] == r["op"]:
            r = {**r, "layer": base[i]["layer"]}
        b = ref.get(r["layer"])
        out.append({**r, "baseline_out_channels": b, "kept": round(r["out_channels"] / b, 4) if b else None})
    return out
