"""Patch-based execution of a `.tflite`'s first stage with standard operators (MCUNetV2's idea).

The first, high-resolution operators of a CNN hold its largest activations. Here they run once per
spatial patch of the stage's output: each patch takes a slice of its input with the halo its receptive
field needs (`STRIDED_SLICE`), zero-padded only where the patch touches the image border (`PAD`, which
writes the input's zero point: exactly what a convolution's own SAME padding contributes), through the
same convolutions with VALID padding and the same weights, quantisation and fused activations; the
patches are joined with `CONCATENATION` into the stage's original output tensor. Every output element
is computed by the same int8 arithmetic on the same inputs, so outputs are bit-identical; halos cost
recomputation (MACs), which the caller bounds.

The stage is a prefix of the operator list that reads the graph input and leaves a single tensor to the
rest of the graph. Operators it may hold: CONV_2D, DEPTHWISE_CONV_2D, PAD (spatial), ADD of two equal
shapes, and an input layout change (TRANSPOSE NCHW->NHWC, or the RESHAPE of a one-channel NCHW input).
Regions are (h0, h1, w0, w1), half-open, in a tensor's own coordinates.
"""

from __future__ import annotations

import copy

import numpy as np

from edgeslim.litert.tfgraph import activations, compact, constant, op_name

Region = tuple[int, int, int, int]
SPATIAL = ("CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "ADD")
MAX_CONCAT = 10  # TFLite Micro's CONCATENATION takes at most 10 inputs


def _const_array(model, sg, ti: int) -> np.ndarray:
    t = sg.tensors[ti]
    dt = {2: np.int32, 4: np.int64}.get(int(t.type), np.int32)
    return np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), dtype=dt).reshape(list(t.shape))


def _axes(sg, ti: int, nchw: set[int]) -> tuple[int, int]:
    return (2, 3) if ti in nchw else (1, 2)


def _kind(model, sg, op) -> str | None:
    """The operator's role in a patch stage, or None when it cannot be in one."""
    name = op_name(model, op)
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return "conv"
    if name == "PAD" and len(op.inputs) == 2 and constant(model, sg, op.inputs[1]):
        p = _const_array(model, sg, op.inputs[1])
        if p.shape == (4, 2) and (p >= 0).all() and not p[0].any() and not p[3].any():
            return "pad"
    if name == "ADD" and len(activations(model, sg, op.inputs)) == 2:
        a, b = (sg.tensors[t] for t in op.inputs)
        if list(a.shape) == list(b.shape) == list(sg.tensors[op.outputs[0]].shape) and len(a.shape) == 4:
            return "add"
    if name == "TRANSPOSE" and op.inputs[0] in sg.inputs and constant(model, sg, op.inputs[1]):
        if _const_array(model, sg, op.inputs[1]).tolist() == [0, 2, 3, 1]:
            return "layout"
    if name == "RESHAPE" and op.inputs[0] in sg.inputs:
        i, o = (list(sg.tensors[t].shape) for t in (op.inputs[0], op.outputs[0]))
        if len(i) == 4 and i[:2] == [1, 1] and o == [1, i[2], i[3], 1]:
            return "layout"
    return None


def stage_cuts(model, subgraph: int = 0) -> list[tuple[int, int]]:
    """(k, boundary tensor) for every prefix of k operators that can run per patch."""
    sg = model.subgraphs[subgraph]
    if len(sg.inputs) != 1 or len(sg.tensors[sg.inputs[0]].shape) != 4:
        return []
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(sg.operators):
        for t in activations(model, sg, op.inputs):
            readers.setdefault(t, []).append(i)
    cuts: list[tuple[int, int]] = []
    produced: set[int] = set()
    for k, op in enumerate(sg.operators):
        if _kind(model, sg, op) is None:
            break
        produced.update(int(t) for t in op.outputs)
        if max(readers.get(sg.inputs[0], [0])) > k:
            continue
        leaving = {t for t in produced if any(r > k for r in readers.get(t, []))} | (produced & set(sg.outputs))
        b = int(op.outputs[0])
        if leaving == {b} and b not in sg.outputs and _kind(model, sg, op) != "layout":
            cuts.append((k + 1, b))
    return cuts


def _conv_geometry(model, sg, op, axis: int) -> tuple[int, int, int, int]:
    """(kernel, stride, dilation, pad before) along spatial axis 0 (H) or 1 (W)."""
    o = op.builtinOptions
    k = int(sg.tensors[op.inputs[1]].shape[1 + axis])
    s = int(o.strideH if axis == 0 else o.strideW)
    d = int(o.dilationHFactor if axis == 0 else o.dilationWFactor) or 1
    n_in = int(sg.tensors[op.inputs[0]].shape[1 + axis])
    n_out = int(sg.tensors[op.outputs[0]].shape[1 + axis])
    pb = max((n_out - 1) * s + (k - 1) * d + 1 - n_in, 0) // 2 if int(o.padding) == 0 else 0  # 0 = SAME
    return k, s, d, pb


def _needs(model, sg, op, kind: str, r: Region) -> list[Region]:
    """Unclamped input regions each activation input needs for output region `r`."""
    if kind in ("layout", "add"):
        return [r] * len(activations(model, sg, op.inputs))
    if kind == "pad":
        p = _const_array(model, sg, op.inputs[1])
        return [(r[0] - p[1][0], r[1] - p[1][0], r[2] - p[2][0], r[3] - p[2][0])]
    out = []
    for ax in (0, 1):
        k, s, d, pb = _conv_geometry(model, sg, op, ax)
        a, b = r[2 * ax], r[2 * ax + 1]
        out += [a * s - pb, (b - 1) * s - pb + (k - 1) * d + 1]
    return [(out[0], out[1], out[2], out[3])]


def _clamp(r: Region, h: int, w: int) -> Region:
    return (max(r[0], 0), min(r[1], h), max(r[2], 0), min(r[3], w))


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class _Builder:
    """Appends tensors, constants and operators to a shallow copy of the model."""

    def __init__(self, model, subgraph: int):
        self.m = copy.copy(model)
        self.m.buffers = list(model.buffers)
        self.m.operatorCodes = list(model.operatorCodes)
        self.m.subgraphs = list(model.subgraphs)
        self.sg = copy.copy(model.subgraphs[subgraph])
        self.m.subgraphs[subgraph] = self.sg
        self.sg.tensors = list(self.sg.tensors)
        self.ops: list = []
        self._consts: dict[bytes, int] = {}
        self._empty = self._empty_buffer()

    def _empty_buffer(self) -> int:
        from ai_edge_litert import schema_py_generated as s

        b0 = self.m.buffers[0] if self.m.buffers else None
        if b0 is not None and (b0.data is None or len(b0.data) == 0):
            return 0
        self.m.buffers.append(s.BufferT())
        return len(self.m.buffers) - 1

    def opcode(self, name: str) -> int:
        from ai_edge_litert import schema_py_generated as s

        code = getattr(s.BuiltinOperator, name)
        for i, c in enumerate(self.m.operatorCodes):
            if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == code:
                return i
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 2
        self.m.operatorCodes.append(c)
        return len(self.m.operatorCodes) - 1

    def like(self, ti: int, shape: list[int]) -> int:
        t = copy.copy(self.sg.tensors[ti])
        t.shape, t.buffer, t.shapeSignature = list(shape), self._empty, None
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def const(self, arr: np.ndarray) -> int:
        from ai_edge_litert import schema_py_generated as s

        arr = np.ascontiguousarray(arr, dtype=np.int32)
        key = arr.tobytes() + bytes(str(arr.shape), "ascii")
        if key not in self._consts:
            b = s.BufferT()
            b.data = np.frombuffer(arr.tobytes(), dtype=np.uint8).copy()
            self.m.buffers.append(b)
            t = s.TensorT()
            t.shape, t.type, t.buffer = list(arr.shape), 2, len(self.m.buffers) - 1  # INT32
            self.sg.tensors.append(t)
            self._consts[key] = len(self.sg.tensors) - 1
        return self._consts[key]

    def op(self, name: str, inputs: list[int], outputs: list[int], opt_type: str, opts) -> None:
        from ai_edge_litert import schema_py_generated as s

        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.opcode(name), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = getattr(s.BuiltinOptions, opt_type), opts
        self.ops.append(o)

    def slice(self, ti: int, begin: list[int], size: list[int]) -> int:
        from ai_edge_litert import schema_py_generated as s

        out = self.like(ti, size)
        end = [b + n for b, n in zip(begin, size)]
        self.op("STRIDED_SLICE", [ti, self.const(np.array(begin)), self.const(np.array(end)),
                                  self.const(np.ones(len(begin)))], [out], "StridedSliceOptions",
                s.StridedSliceOptionsT())
        return out

    def pad(self, ti: int, pads: np.ndarray) -> int:
        from ai_edge_litert import schema_py_generated as s

        shape = [int(n) + int(p.sum()) for n, p in zip(self.sg.tensors[ti].shape, pads)]
        out = self.like(ti, shape)
        self.op("PAD", [ti, self.const(pads)], [out], "PadOptions", s.PadOptionsT())
        return out

    def concat(self, parts: list[int], out: int, axis: int) -> None:
        from ai_edge_litert import schema_py_generated as s

        o = s.ConcatenationOptionsT()
        o.axis, o.fusedActivationFunction = axis, 0
        self.op("CONCATENATION", parts, [out], "ConcatenationOptions", o)


def patch_stage(model, k: int, boundary: int, grid: tuple[int, int], subgraph: int = 0):
    """A new model whose first `k` operators run per patch of a `grid` (rows, cols) over `boundary`."""
    sg = model.subgraphs[subgraph]
    stage = sg.operators[:k]
    kinds = [_kind(model, sg, op) or "" for op in stage]
    nchw = {int(op.inputs[0]) for op, kd in zip(stage, kinds) if kd == "layout"}
    bh, bw = (int(s) for s in sg.tensors[boundary].shape[1:3])
    rows, cols = _splits(bh, grid[0]), _splits(bw, grid[1])
    b = _Builder(model, subgraph)

    def hw(ti: int) -> tuple[int, int]:
        ax = _axes(sg, ti, nchw)
        return int(sg.tensors[ti].shape[ax[0]]), int(sg.tensors[ti].shape[ax[1]])

    def fetch(cur: dict[int, tuple[int, Region]], t: int, u: Region) -> int:
        """The patch's tensor for region `u` of `t`: a slice of what the patch holds, PAD at the border."""
        ti, have = cur[t]
        c = _clamp(u, *hw(t))
        ax = _axes(sg, t, nchw)
        if c != have:
            shape = [int(s) for s in b.sg.tensors[ti].shape]
            begin = [0] * len(shape)
            begin[ax[0]], begin[ax[1]] = c[0] - have[0], c[2] - have[2]
            shape[ax[0]], shape[ax[1]] = c[1] - c[0], c[3] - c[2]
            ti = b.slice(ti, begin, shape)
        if c != u:
            pads = np.zeros((len(sg.tensors[t].shape), 2), np.int32)
            pads[ax[0]] = (c[0] - u[0], u[1] - c[1])
            pads[ax[1]] = (c[2] - u[2], u[3] - c[3])
            ti = b.pad(ti, pads)
        return ti

    row_outs = []
    for rh in rows:
        row_parts = []
        for cw in cols:
            need: dict[int, Region] = {boundary: (rh[0], rh[1], cw[0], cw[1])}
            req: dict[tuple[int, int], Region] = {}
            for i in range(k - 1, -1, -1):  # regions each tensor must hold for this patch
                op = stage[i]
                if int(op.outputs[0]) not in need:
                    continue
                for j, (t, u) in enumerate(zip(activations(model, sg, op.inputs),
                                                _needs(model, sg, op, kinds[i], need[int(op.outputs[0])]))):
                    req[(i, j)] = u
                    need[t] = _union(need.get(t), _clamp(u, *hw(t)))
            h_in, w_in = hw(int(sg.inputs[0]))
            cur: dict[int, tuple[int, Region]] = {int(sg.inputs[0]): (int(sg.inputs[0]), (0, h_in, 0, w_in))}

            for i, op in enumerate(stage):
                out = int(op.outputs[0])
                if out not in need:
                    continue
                r = need[out]
                ins = [fetch(cur, t, req[(i, j)]) for j, t in enumerate(activations(model, sg, op.inputs))]
                if kinds[i] == "pad":
                    cur[out] = (ins[0], r)
                    continue
                shape = [int(s) for s in sg.tensors[out].shape]
                shape[1], shape[2] = r[1] - r[0], r[3] - r[2]
                new_out = b.like(out, shape)
                o = copy.copy(op)
                o.outputs = [new_out]
                if kinds[i] == "conv":
                    o.builtinOptions = copy.copy(op.builtinOptions)
                    o.builtinOptions.padding = 1  # VALID: the halo and border PAD are already in the input
                    o.inputs = [ins[0], *list(op.inputs)[1:]]
                elif kinds[i] == "add":
                    o.inputs = ins
                elif op_name(model, op) == "TRANSPOSE":
                    o.inputs = [ins[0], int(op.inputs[1])]
                else:  # RESHAPE of a one-channel NCHW input
                    o.inputs = [ins[0], b.const(np.array(shape))] if len(op.inputs) > 1 else [ins[0]]
                    if o.builtinOptions is not None and getattr(o.builtinOptions, "newShape", None) is not None:
                        o.builtinOptions = copy.copy(op.builtinOptions)
                        o.builtinOptions.newShape = shape
                b.ops.append(o)
                cur[out] = (new_out, r)
            row_parts.append(fetch(cur, boundary, need[boundary]))
        if len(row_parts) == 1:
            row_outs.append(row_parts[0])
        else:
            shape = [int(s) for s in sg.tensors[boundary].shape]
            shape[1] = rh[1] - rh[0]
            out = boundary if len(rows) == 1 else b.like(boundary, shape)
            b.concat(row_parts, out, 2)
            row_outs.append(out)
    if len(row_outs) > 1:
        b.concat(row_outs, boundary, 1)
    elif row_outs[0] != boundary:  # a 1x1 grid: nothing to patch
        return model
    b.sg.operators = b.ops + [copy.copy(op) for op in sg.operators[k:]]
    for op in b.sg.operators:
        op.inputs, op.outputs = list(op.inputs), list(op.outputs)
    compact(b.m, subgraph)
    return b.m


def grids(max_side: int = 8) -> list[tuple[int, int]]:
    """Patch grids (rows, cols) tried: up to `max_side` per side (TFLite Micro concatenates <= 10 inputs)."""
    side = min(max_side, MAX_CONCAT)
    return [(r, c) for r in range(1, side + 1) for c in range(1, side + 1) if r * c > 1]


__all__ = ["patch_stage", "stage_cuts", "grids", "MAX_CONCAT"]
