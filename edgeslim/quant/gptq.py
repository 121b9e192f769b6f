"""GPTQ rounding of int8 weight codes (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), weight-only, in numpy.

Round-to-nearest makes each weight's error as small as it can be; what the layer's output sees is the
error *through its inputs*: ||(W - Q) X^T||^2 = tr((W - Q) H (W - Q)^T) with H = X^T X, X one row per input
position (Conv: its im2col patch of Cin * kh * kw values; MatMul/Gemm: the last axis of the input). GPTQ
quantizes the columns of W in order and spreads each column's rounding error over the columns not yet
quantized through the Cholesky factor of H^-1 (the Optimal Brain Surgeon update), so later columns absorb
the error of earlier ones. Dampening: 1% of H's mean diagonal is added to the diagonal.

The codes are the same format as round-to-nearest (`onnxkit.weight_only._int8`): symmetric int8 in
[-127, 127], one scale per output channel = the channel's largest |weight| / 127, decoded by Cast -> Mul
(folded by ONNX Runtime at load: same speed). The largest weight of each channel is pinned to +-127, so the
rounded weights (`grid_weights`, float32 on the grid) give back exactly these codes and this scale when
`_int8` quantizes them again: any caller that stores int8 codes of a weight gets GPTQ's codes by being
handed the rounded weight instead of the original.

H is accumulated feed by feed (memory: one feed's activations plus one K x K float64 matrix per layer, whatever
the number of feeds; layers in groups of at most `H_BYTES` of Hessians, the feeds run once per group); at most
`max_rows` input rows per feed and layer are used (a seeded sample).
Supported: Conv 1-D/2-D with group 1 (grouped/depthwise convs are skipped: few bytes, and their per-group
Hessians are tiny), MatMul with a 2-D constant weight, Gemm with transA = 0. Others are left out. A layer
where GPTQ's error on the calibration rows is not below round-to-nearest's keeps the nearest codes.

Measured on PP-OCRv4 rec's 20 GPTQ-able fidelity floats (`benchmarks/bench_gptq.py`, docs/benchmarks.md: float
compute, those weights int8, H from 64 samples, scored on 64 others): relative output error summed over layers
3.1e-3 (nearest) -> 4.3e-4 (GPTQ), top-1 agreement per position 0.9777 -> 0.9938. Not kept: act-order (columns
by decreasing H diagonal: lower error on the calibration rows, lower agreement and cosine on other samples) and
an MSE clip search of the scale (no lower error).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from edgeslim.onnxkit.consts import attr
from edgeslim.onnxkit.graph import with_outputs
from edgeslim.onnxkit.inputs import Feed
from edgeslim.onnxkit.session import session

DAMP = 0.01      # share of H's mean diagonal added to it
BLOCK = 128      # columns per lazy-update block (same result as column by column, faster)
MAX_ROWS = 4096  # input rows per feed and layer that enter H
H_BYTES = 1 << 29  # Hessians held at once (512 MiB); more layers: the feeds run again per group of layers


@dataclass
class Rounded:
    weight: np.ndarray  # float32, the layer's weight in its ONNX layout, on the int8 grid
    rtn_error: float    # relative output error tr(E H E^T) / tr(W H W^T) of round-to-nearest (calibration rows)
    error: float        # the same for GPTQ's codes


def supported(n: onnx.NodeProto, w: np.ndarray | None) -> bool:
    """True when node `n` with constant weight `w` (input 1) is a layer GPTQ rounds here."""
    if w is None or w.dtype != np.float32 or w.ndim < 2 or not np.isfinite(w).all():
        return False
    if n.op_type == "Conv":
        auto = attr(n, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        return w.ndim in (3, 4) and int(attr(n, "group", 1)) == 1 and auto in ("NOTSET", "VALID")
    if n.op_type == "Gemm":
        return w.ndim == 2 and not attr(n, "transA", 0)
    return n.op_type == "MatMul" and w.ndim == 2


def _matrix(n: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The weight as [output channels, K] with K in the order of `_rows`' columns."""
    if n.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    if n.op_type == "Gemm" and attr(n, "transB", 0):
        return w
    return w.T  # MatMul / Gemm: [K, N]


def _layout(n: onnx.NodeProto, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `_matrix`."""
    if n.op_type == "Conv" or (n.op_type == "Gemm" and attr(n, "transB", 0)):
        return m.reshape(shape)
    return np.ascontiguousarray(m.T)


def _rows(n: onnx.NodeProto, x: np.ndarray, wshape: tuple[int, ...]) -> np.ndarray:
    """Input rows of the layer: [positions, K] (Conv: im2col patches, channel-major like the weight)."""
    if n.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    nd = len(wshape) - 2
    pads = list(attr(n, "pads", None) or [0] * (2 * nd))
    strides = list(attr(n, "strides", None) or [1] * nd)
    dil = list(attr(n, "dilations", None) or [1] * nd)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    span = [dil[i] * (wshape[2 + i] - 1) + 1 for i in range(nd)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # [B, C, *out_full, *span]
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dil)
    win = win[sl]  # [B, C, *out, *k]
    b, c = win.shape[:2]
    out = win.shape[2:2 + nd]
    perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # [B, *out, C, *k]
    return win.transpose(perm).reshape(b * int(np.prod(out)), -1)


def hessians(model: onnx.ModelProto, feeds: Iterable[Feed], nodes: Sequence[onnx.NodeProto],
             weights: dict[str, np.ndarray], max_rows: int = MAX_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Node name -> H = X^T X / rows (float64, K x K) over the feeds, run through `model` one at a time."""
    s = session(with_outputs(model, sorted({n.input[0] for n in nodes})).SerializeToString())
    names = [i.name for i in s.get_inputs()]
    outs = [o.name for o in s.get_outputs()]
    rngs = {n.name: np.random.default_rng([seed, zlib.crc32(n.name.encode())]) for n in nodes}  # per layer: the
    # same rows whatever group the layer is in
    acc: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for f in feeds:
        vals = dict(zip(outs, s.run(None, {k: f[k] for k in names})))
        for n in nodes:
            x = _rows(n, np.asarray(vals[n.input[0]], np.float32), weights[n.name].shape)
            if len(x) > max_rows:
                x = x[rngs[n.name].choice(len(x), max_rows, replace=False)]
            x = x.astype(np.float64)
            acc[n.name] = acc.get(n.name, 0) + x.T @ x
            count[n.name] = count.get(n.name, 0) + len(x)
        del vals
    return {k: v / max(count[k], 1) for k, v in acc.items()}


def gptq_codes(w: np.ndarray, h: np.ndarray, damp: float = DAMP, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes [out, K], scale [out, 1] float32) of `w` [out, K] for inputs with Hessian `h` [K, K]; the
    scale is round-to-nearest's (largest |weight| / 127 per row)."""
    amax = np.abs(w).max(axis=1, keepdims=True).astype(np.float64)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return _with_scale(w, h, damp, block, scale), scale


def _with_scale(w: np.ndarray, h: np.ndarray, damp: float, block: int, scale: np.ndarray) -> np.ndarray:
    """GPTQ's int8 codes [out, K] of `w` with the per-row `scale` [out, 1]."""
    w = w.astype(np.float64)
    s = scale.astype(np.float64)
    amax = np.abs(w).max(axis=1, keepdims=True)
    pin = np.abs(w).argmax(axis=1)  # each channel's largest weight stays +-127: the scale is reproduced
    sign = np.sign(w[np.arange(len(w)), pin])
    h = h.copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    k = w.shape[1]
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, e1, u1 = w[:, i1:i2].copy(), np.zeros((len(w), i2 - i1)), u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qi = np.clip(np.rint(col / s[:, 0]), -127, 127)
            hit = pin == i1 + i
            qi[hit] = 127 * sign[hit]
            q[:, i1 + i] = qi
            err = (col - qi * s[:, 0]) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            e1[:, i] = err
        w[:, i2:] -= e1 @ u[i1:i2, i2:]
    codes = q.astype(np.int8)
    codes[amax[:, 0] == 0] = 0
    return codes


def _rel_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    e = (w - wq).astype(np.float64)
    den = float(np.sum((w.astype(np.float64) @ h) * w))
    return float(np.sum((e @ h) * e)) / max(den, 1e-30)


def round_layer(n: onnx.NodeProto, w: np.ndarray, h: np.ndarray) -> Rounded:
    """GPTQ-rounded weight of node `n` (ONNX layout) and the output errors before/after."""
    m = _matrix(n, w)
    codes, scale = gptq_codes(m, h)
    g = codes.astype(np.float32) * scale
    amax = np.abs(m).max(axis=1, keepdims=True)
    s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    rtn = np.clip(np.rint(m / s), -127, 127) * s
    e_rtn, e_gq = _rel_error(m, rtn, h), _rel_error(m, g, h)
    if e_gq >= e_rtn:  # GPTQ is greedy: on a small layer it can lose; then the nearest codes stay
        g, e_gq = rtn, e_rtn
    return Rounded(_layout(n, g, w.shape).astype(np.float32), e_rtn, e_gq)


def _groups(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> list[list[onnx.NodeProto]]:
    """`nodes` in consecutive groups whose Hessians (K x K float64 each) take at most H_BYTES together."""
    out: list[list[onnx.NodeProto]] = []
    used = H_BYTES + 1
    for n in nodes:
        k = int(np.prod(weights[n.name].shape[1:])) if n.op_type == "Conv" else _matrix(n, weights[n.name]).shape[1]
        if used + 8 * k * k > H_BYTES and (not out or out[-1]):
            out.append([])
            used = 0
        out[-1].append(n)
        used += 8 * k * k
    return out


def grid_weights(model: onnx.ModelProto, feeds: Iterable[Feed], nodes: set[str] | None = None,
                 min_elements: int = 1024, seed: int = 0, notes: list[str] | None = None) -> dict[str, Rounded]:
    """Node name -> GPTQ-rounded weight (input 1), for the supported main-graph nodes of `model` (float) named
    in `nodes` (all when None) with at least `min_elements` weights; H from the feeds run through `model`.
    `notes` (if given) receives `rounding_note`'s line when `nodes` is None or not empty."""
    inits = {t.name: t for t in model.graph.initializer}
    chosen, weights = [], {}
    for n in model.graph.node:
        if (nodes is not None and n.name not in nodes) or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.size >= min_elements and supported(n, w):
            chosen.append(n)
            weights[n.name] = w
    out: dict[str, Rounded] = {}
    for group in _groups(chosen, weights):  # the feeds run once per group: H memory stays under H_BYTES
        hs = hessians(model, feeds, group, weights, seed=seed)
        out.update({n.name: round_layer(n, weights[n.name], hs[n.name]) for n in group if n.name in hs})
        del hs
    if notes is not None and (nodes is None or nodes):
        notes.append(rounding_note(out))
    return out


def with_grid(model: onnx.ModelProto, rounded: dict[str, Rounded], nodes: Iterable[str]) -> onnx.ModelProto:
    """`model` itself when none of `nodes` has a rounded weight, else a copy in which those of `nodes` read their
    rounded weight (a new initializer each; the original stays for other readers)."""
    todo = [n for n in nodes if n in rounded]
    if not todo:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    want = set(todo)
    for n in out.graph.node:
        if n.name in want:
            name = f"{n.input[1]}__gptq_{n.name}"
            out.graph.initializer.append(numpy_helper.from_array(rounded[n.name].weight, name))
            n.input[1] = name
    return out


def by_initializer(model: onnx.ModelProto, rounded: dict[str, Rounded]) -> dict[str, np.ndarray]:
    """{initializer name: rounded weight} for the weights read by exactly one node, a rounded one (main graph;
    for `onnxkit.weight_only.weight_only(rounded=...)`)."""
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.name)
    return {n.input[1]: rounded[n.name].weight for n in model.graph.node
            if n.name in rounded and readers.get(n.input[1]) == [n.name]}


def rounding_note(rounded: dict[str, Rounded]) -> str:
    """One line: layers rounded and their relative output error (calibration rows), nearest vs GPTQ."""
    if not rounded:
        return "GPTQ rounding: no supported layer (Conv group 1, MatMul/Gemm with a 2-D constant weight)"
    rtn = np.array([r.rtn_error for r in rounded.values()])
    gq = np.array([r.error for r in rounded.values()])
    return (f"GPTQ rounding of {len(rounded)} layers' int8 weight codes: relative output error (calibration "
            f"inputs) median {np.median(rtn):.2e} -> {np.median(gq):.2e}, worst {rtn.max():.2e} -> {gq.max():.2e} "
            "(round-to-nearest -> GPTQ)")
