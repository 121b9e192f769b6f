"""Single ops of a small re-exported graph rewritten as fewer or cheaper kernels (issue 23).

A small streaming model (a VAD: about 0.7 M MACs, about 90 us per call in ONNX Runtime, one thread) spends most
of a call in per-kernel overhead, and a traced export keeps ops that a hand-written graph would not have.
`cheapen_ops` rewrites, in the main graph only, where the pattern is met exactly:

- `identity_arith`: Add/Sub of a zero constant, Mul/Div by a constant one (one element, rank not above the other
  input's: no broadcast) removed; readers read the other input (a graph output keeps its name);
- `pow_square` (not in DEFAULT_RULES): Pow(x, 2) with a one-element constant exponent -> Mul(x, x), except where
  a ReduceMean reads it (ONNX Runtime fuses LayerNormalization only from the Pow form). Left out by default:
  no faster on the VAD (88.1 us either way), and on PP-OCRv4 rec, unguarded, it broke ORT's LayerNorm fusion
  (415 -> 455 kernels per call);
- `conv_as_matmul`: a 1-D Conv with one input channel, group 1, no conv padding, a constant weight [Co, 1, K]
  and few output positions (<= MAX_POSITIONS), whose input is Unsqueeze(axis 1) of a [N, L] tensor, perhaps
  through a reflect or edge Pad of the last axis (an STFT front end written as a conv) -> Gather of the
  receptive fields + MatMul by W^T + (bias Add) + Transpose. ONNX Runtime prepacks a constant right-hand MatMul
  operand; its conv (im2col + GEMM) costs more. Where the kernel is a whole number of hops of >= MIN_CHUNK
  samples (the STFT: 256 = 2 x 128) the fields are gathered a hop at a time: Pad (cut to the samples the frames
  read) -> Reshape into hops -> Gather of hop numbers -> Reshape; else one Gather element by element with the
  padding folded into its constant indices (on the VAD's shapes 18.6 us for Gather + MatMul against 12.5 us for
  the hop-wise version with its Pad). Measured on the silero VAD's STFT (benchmarks/bench_cheap_ops.py,
  docs/benchmarks.md).

- `conv_rows` (`onnxkit.conv_rows`): a 1-D conv of >= 2 input channels and few output positions as one MatMul on
  channels-last rows, Transpose pairs around one elementwise op between such convs cancelled (the VAD's encoder:
  a Conv + Relu of 22.2 us became 11.1 us).
- `hardswish`, `se_gemm` (`onnxkit.cheap_cnn`, 2-D CNNs): a written-out hard-swish x * Clip(x + 3, 0, 6) / 6 as
  one HardSwish (PP-OCR cls's FP32 re-export 1.38x); the SE block's 1x1 convs on [N, C, 1, 1] as Gemm (not in
  DEFAULT_RULES: no faster).
- `matmul_gemm`, `gather_view`, `unary_views`, `rnn_outputs` (`onnxkit.gemm_rows`): MatMul + bias Add on
  [N, M, K] rows as one 2-D Gemm (ONNX Runtime then fuses a following Relu), an identity Gather as a Reshape,
  unary elementwise ops moved off view chains so they collapse (the VADs' last stage 45 -> 32 kernels, 1.11x); `rnn_outputs` (not in DEFAULT_RULES: 1.003-1.015x on the VADs, within noise):
  outputs of an LSTM/GRU/RNN nothing reads dropped;
- `conv_affine` (`onnxkit.conv_affine`): constant per-channel Mul/Add/Sub/Div beside a Conv folded into its
  weight and bias (`bnfold.fold_affine`, the INT8 plan's own fold, now on the FP32 re-export too): PP-OCRv4
  rec's learnable affine blocks, 405 -> 325 kernels per call, 1.078x on its FP32 stage;
- `dim_names` (`onnxkit.dim_names`, applied last): symbolic shapes written as value_info for the equal-shaped
  inputs of Add/Sum/Mul, so ONNX Runtime can prove them equal and fuse a residual Add into the NCHWc conv before
  it (PP-OCR cls, any image size: 145 -> 117 kernels per call, 1.015x on its FP32 stage, 1.02x on its last
  stage; no-op on PP-OCRv4 det/rec and ddddocr common). The graph's nodes are not changed; the steps that drop
  value_info (`align_channels` when it pads, `quant.compact_onnx`) write it again;
- `affine_conv` (not in DEFAULT_RULES: `quantize_int8` applies it to its candidates, after the INT8 plan's own
  folds; `onnxkit.affine_conv`): a constant per-channel Mul/Add chain on a conv's feature map as one 1x1 depthwise
  Conv, which ONNX Runtime keeps in its blocked layout (PP-OCRv4 rec's and det's last stages 1.06x);
- `affine_swap` (not in DEFAULT_RULES, `onnxkit.conv_affine`): a Mul -> Add pair in front of a padded Conv turned
  into Add -> Mul so the Mul folds too; faster, but it moved rec's INT8 calibration (its docstring).

Rewrites tried and left out because ONNX Runtime ran them slower (interleaved timing, ORT 1.32, one thread):
the sum of squares of two halves of an axis (Slice, Slice -> square -> Add) as Mul + Reshape + ReduceSum
(31.5 us against 30.5 us for the STFT block); the Gather of that conv with the weight as the left MatMul operand
(37 us). ONNX Runtime already turns sibling Slices into Split, Gathers of a state into Split, Conv+Relu into
FusedConv, and folds a weight's Cast+Mul dequantization.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.onnxkit.consts import Consts, attr, unique_name
from edgeslim.onnxkit.graph import consumers, insert_before, remove_dead
from edgeslim.onnxkit.static_shapes import Dim, symbolic_dims
from edgeslim.onnxkit.view_chains import alias_reads, is_main_node

RULES = ("identity_arith", "pow_square", "conv_as_matmul", "conv_rows", "conv_affine", "affine_swap", "hardswish",
         "se_gemm", "matmul_gemm", "gather_view", "unary_views", "rnn_outputs", "affine_conv", "dim_names")
DEFAULT_RULES = ("identity_arith", "conv_as_matmul", "conv_rows", "conv_affine", "hardswish", "matmul_gemm",
                 "gather_view", "unary_views", "dim_names")  # measured faster (docstring)
MAX_POSITIONS = 8  # output positions of a conv taken by `conv_as_matmul` (measured with 4)
MIN_CHUNK = 32  # samples per hop from which the receptive fields are gathered a hop at a time (measured with 128)
_IDENTITY = {"Add": (0.0, (0, 1)), "Sub": (0.0, (1,)), "Mul": (1.0, (0, 1)), "Div": (1.0, (1,))}


def cheapen_ops(model: onnx.ModelProto, dims: dict[str, list[Dim]] | None = None,
                rules: tuple[str, ...] = DEFAULT_RULES) -> dict[str, int]:
    """Apply `rules` (a subset of RULES) to `model` in place, as the module docstring says; returns how many
    times each rule was applied. `dims`: `static_shapes.symbolic_dims(model)` when the caller has it (taken
    before `fold_static_shapes` / `collapse_views` is fine: the tensors they keep keep their shapes)."""
    bad = [r for r in rules if r not in RULES]
    assert not bad, f"unknown rules {bad}"
    dims = symbolic_dims(model) if dims is None else dims
    counts = dict.fromkeys(rules, 0)
    if not dims:
        return counts
    g = model.graph
    consts = Consts(g)
    if "identity_arith" in rules:
        counts["identity_arith"] = _identity_arith(g, dims, consts)
    if "pow_square" in rules:
        counts["pow_square"] = _pow_square(g, dims, consts)
    if "conv_as_matmul" in rules:
        counts["conv_as_matmul"] = _conv_as_matmul(g, dims, consts)
    if "conv_rows" in rules:  # after conv_as_matmul, which takes the one-channel convs
        from edgeslim.onnxkit.conv_rows import conv_rows

        counts["conv_rows"] = conv_rows(g, dims, consts)
    if "affine_swap" in rules:  # `onnxkit.conv_affine`: Mul -> Add in front of a padded conv as Add -> Mul
        from edgeslim.onnxkit.conv_affine import swap_affine

        counts["affine_swap"] = swap_affine(g, Consts(g))
    if "conv_affine" in rules or counts.get("affine_swap"):  # constant Mul/Add beside convs folded into them
        from edgeslim.onnxkit.bnfold import fold_affine

        folded = fold_affine(model)  # with affine_swap alone, its moved Muls are folded and counted there
        counts["conv_affine" if "conv_affine" in rules else "affine_swap"] += folded
    if "hardswish" in rules or "se_gemm" in rules:  # 2-D CNN rules (`onnxkit.cheap_cnn`)
        from edgeslim.onnxkit import cheap_cnn

        if "hardswish" in rules:
            counts["hardswish"] = cheap_cnn.hardswish(model, Consts(g))  # fresh: the folds above changed initializers
        if "se_gemm" in rules:
            counts["se_gemm"] = cheap_cnn.se_gemm(g, dims, Consts(g))
    if {"matmul_gemm", "gather_view", "unary_views", "rnn_outputs"} & set(rules):  # `onnxkit.gemm_rows`
        from edgeslim.onnxkit.gemm_rows import gemm_rows

        counts.update(gemm_rows(model, rules))
    if "affine_conv" in rules:  # `onnxkit.affine_conv` (the INT8 plan applies it to its candidates)
        from edgeslim.onnxkit.affine_conv import affine_as_conv

        counts["affine_conv"] = affine_as_conv(model)
    if any(counts.values()):
        remove_dead(model)
        made = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
        for v in [v for v in g.value_info if v.name not in made]:  # shapes of tensors no node makes any more
            g.value_info.remove(v)
    if "dim_names" in rules:  # last: shapes of the graph as rewritten (`onnxkit.dim_names`)
        from edgeslim.onnxkit.dim_names import name_dims

        counts["dim_names"] = name_dims(model)
    return counts


def _rank(dims: dict[str, list[Dim]], name: str) -> int | None:
    d = dims.get(name)
    return None if d is None else len(d)


def _one_element(consts: Consts, name: str, rank_of_other: int | None) -> float | None:
    """The value of constant `name` when it has one element and its rank does not exceed `rank_of_other`
    (so broadcasting it changes no shape), else None."""
    v = consts.get(name)
    if v is None or v.size != 1 or rank_of_other is None or v.ndim > rank_of_other:
        return None
    return float(v.reshape(-1)[0])


def _identity_arith(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    outputs = {o.name for o in g.output}
    prod = {o: n for n in g.node for o in n.output if o}
    done = 0
    nodes: list[onnx.NodeProto] = list(g.node)
    for n in nodes:
        if n.op_type not in _IDENTITY or not is_main_node(n) or len(n.input) != 2 or prod.get(n.output[0]) is not n:
            continue
        unit, sides = _IDENTITY[n.op_type]
        for c in sides:  # c: the side that may be the constant
            x = n.input[1 - c]
            if x in consts or _one_element(consts, n.input[c], _rank(dims, x)) != unit:
                continue
            sx = _static(dims, x)
            if sx is None or sx != _static(dims, n.output[0]):  # unknown or different shapes: not provably a no-op
                continue
            if alias_reads(g, n.output[0], x, outputs, prod):
                done += 1
            break
    return done


def _pow_square(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    readers = consumers(g)
    done = 0
    for n in g.node:
        if n.op_type != "Pow" or not is_main_node(n) or len(n.input) != 2:
            continue
        if any(r.op_type == "ReduceMean" for r in readers.get(n.output[0], [])):  # a LayerNorm's variance
            continue
        if _one_element(consts, n.input[1], _rank(dims, n.input[0])) != 2.0:
            continue
        n.op_type = "Mul"
        n.input[1] = n.input[0]
        done += 1
    return done


def _static(dims: dict[str, list[Dim]], name: str) -> list[Dim] | None:
    d = dims.get(name)
    return d if d is not None and all(x is not None for x in d) else None


def _fields(src_len: int, pad: tuple[int, int, str] | None, out_len: int, k: int, stride: int,
            dilation: int) -> np.ndarray | None:
    """[out_len, k] int64 indices into the unpadded last axis (length `src_len`) of each conv tap; `pad`:
    (begin, end, mode) of a reflect/edge Pad in between. None where a reflection would leave the axis."""
    p = np.arange(out_len)[:, None] * stride + np.arange(k)[None, :] * dilation  # positions in the padded axis
    if pad is None:
        return p.astype(np.int64)
    b, e, mode = pad
    i = p - b
    if mode == "edge":
        return np.clip(i, 0, src_len - 1).astype(np.int64)
    if b >= src_len or e >= src_len:
        return None
    i = np.where(i < 0, -i, i)
    i = np.where(i >= src_len, 2 * (src_len - 1) - i, i)
    return i.astype(np.int64)


def _evaluate(prod: dict[str, onnx.NodeProto], consts: Consts, name: str, limit: int = 32) -> np.ndarray | None:
    """The value of tensor `name` when it is a constant or computed from constants only by at most `limit`
    plain nodes (the exporter builds a Pad's pads with ConstantOfShape, Concat, Reshape, Slice, ...); else None.
    Evaluated with ONNX's reference evaluator."""
    v = consts.get(name)
    if v is not None:
        return v
    nodes: dict[int, onnx.NodeProto] = {}
    leaves: dict[str, np.ndarray] = {}
    stack = [name]
    while stack:
        t = stack.pop()
        if not t or t in leaves:
            continue
        c = consts.get(t)
        if c is not None:
            leaves[t] = c
            continue
        p = prod.get(t)
        if p is None or p.domain not in ("", "ai.onnx") or any(a.type == onnx.AttributeProto.GRAPH
                                                                 for a in p.attribute):
            return None
        if id(p) not in nodes:
            nodes[id(p)] = p
            stack.extend(p.input)
        if len(nodes) > limit:
            return None
    from onnx.reference import ReferenceEvaluator

    g = helper.make_graph(_topo(list(nodes.values())), "pads", [], [helper.make_empty_tensor_value_info(name)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in leaves.items()])
    try:
        out: Any = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).run(None, {})
    except Exception:  # noqa: BLE001 -- an op the reference evaluator does not take: not a constant to us
        return None
    return np.asarray(out[0])


def _topo(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` ordered so every node comes after the producers of its inputs among them."""
    made = {o: n for n in nodes for o in n.output}
    out: list[onnx.NodeProto] = []
    seen: set[int] = set()

    def visit(n: onnx.NodeProto) -> None:
        if id(n) in seen:
            return
        seen.add(id(n))
        for i in n.input:
            if i in made:
                visit(made[i])
        out.append(n)

    for n in nodes:
        visit(n)
    return out


def _through_pad(prod: dict[str, onnx.NodeProto], consts: Consts, t: str,
                 pad: tuple[int, int, str] | None) -> tuple[str, tuple[int, int, str] | None]:
    """(`t`'s source, its padding) when `t` is made by a reflect/edge Pad of the last axis only (constant
    pads) and no Pad was met yet; else (`t`, `pad`) unchanged."""
    p = prod.get(t)
    if pad is not None or p is None or p.op_type != "Pad" or not is_main_node(p) or len(p.input) not in (2, 3):
        return t, pad
    mode = attr(p, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    pv = _evaluate(prod, consts, p.input[1])
    if mode not in ("reflect", "edge") or pv is None or pv.size % 2:
        return t, pad
    v = [int(x) for x in pv.reshape(-1)]
    r = len(v) // 2
    if any(v[:r - 1]) or any(v[r:-1]) or v[r - 1] < 0 or v[-1] < 0:
        return t, pad
    return p.input[0], (v[r - 1], v[-1], mode)


def _chunked_fields(g: onnx.GraphProto, src: str, src_len: int, pad: tuple[int, int, str] | None, out_len: int,
                    k: int, stride: int, dil: int, out: str) -> list[onnx.NodeProto] | None:
    """Nodes writing the receptive fields [N, L', K] to `out` as whole chunks of `stride` samples: (Pad ->)
    Reshape [N, chunks, stride] -> Gather of chunk indices -> Reshape [N, L', K]. ONNX Runtime's Gather copies
    a chunk at a time, where the element-by-element Gather costs about 1 ns x K x L' more (module docstring).
    None where the taps do not fall on whole chunks (dilation, K not a multiple of the stride, chunks under
    MIN_CHUNK samples) or the padding cannot be cut to the length the frames use."""
    if dil != 1 or k % stride or stride < MIN_CHUNK:
        return None
    used = (out_len - 1) * stride + k  # samples the frames read, from padded position 0
    nodes: list[onnx.NodeProto] = []
    x = src
    b, mode = (pad[0], pad[2]) if pad is not None else (0, "")
    e = used - src_len - b  # the end padding the frames need
    if e < 0 or (pad is None and e != 0) or (mode == "reflect" and (b >= src_len or e >= src_len)):
        return None
    if b or e:
        pads, x = unique_name(g, f"{out}_pads"), unique_name(g, f"{out}_padded")
        g.initializer.append(numpy_helper.from_array(np.array([0, b, 0, e], np.int64), pads))
        nodes.append(helper.make_node("Pad", [src, pads], [x], mode=mode))
    shape1, chunks, ci, gathered, shape2 = (unique_name(g, f"{out}_{t}") for t in (
        "chunk_shape", "chunks", "chunk_idx", "gathered", "fields_shape"))
    g.initializer.append(numpy_helper.from_array(np.array([0, used // stride, stride], np.int64), shape1))
    idx = np.arange(out_len)[:, None] + np.arange(k // stride)[None, :]  # [L', K / stride] chunk numbers
    g.initializer.append(numpy_helper.from_array(idx.astype(np.int64), ci))
    g.initializer.append(numpy_helper.from_array(np.array([0, out_len, k], np.int64), shape2))
    nodes += [helper.make_node("Reshape", [x, shape1], [chunks]),  # [N, used / stride, stride]
              helper.make_node("Gather", [chunks, ci], [gathered], axis=1),  # [N, L', K / stride, stride]
              helper.make_node("Reshape", [gathered, shape2], [out])]  # [N, L', K]
    return nodes


def _conv_as_matmul(g: onnx.GraphProto, dims: dict[str, list[Dim]], consts: Consts) -> int:
    prod = {o: n for n in g.node for o in n.output if o}
    before: dict[int, list[onnx.NodeProto]] = {}
    done = 0
    nodes: list[onnx.NodeProto] = list(g.node)  # held: insert_before finds them by id()
    for n in nodes:
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or len(n.output) != 1 or len(n.input) < 2:
            continue
        w = consts.get(n.input[1])
        bias = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if w is None or w.ndim != 3 or w.shape[1] != 1 or w.dtype != np.float32 \
                or (len(n.input) > 2 and n.input[2] and bias is None):
            continue
        if int(attr(n, "group", 1)) != 1 or any(int(p) for p in attr(n, "pads", [0, 0])) \
                or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            continue
        co, _, k = w.shape
        stride, dil = int(attr(n, "strides", [1])[0]), int(attr(n, "dilations", [1])[0])
        src, pad = n.input[0], None
        src, pad = _through_pad(prod, consts, src, pad)
        u = prod.get(src)
        if u is None or u.op_type != "Unsqueeze" or not is_main_node(u):
            continue
        axes = attr(u, "axes", None) if len(u.input) < 2 else consts.get(u.input[1])
        if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] not in ([1], [-2]):
            continue
        src, pad = _through_pad(prod, consts, u.input[0], pad)
        sd, cd = _static(dims, src), _static(dims, n.input[0])
        if sd is None or cd is None or len(sd) != 2 or not isinstance(sd[1], int) or not isinstance(cd[2], int):
            continue
        out_len = (cd[2] - dil * (k - 1) - 1) // stride + 1
        if not 1 <= out_len <= MAX_POSITIONS:
            continue
        y = n.output[0]
        names = {t: unique_name(g, f"{y}_{t}") for t in ("fields_idx", "fields", "wt", "mm", "bias", "mmb")}
        new = _chunked_fields(g, src, sd[1], pad, out_len, k, stride, dil, names["fields"])
        if new is None:  # element by element: each tap's index, the padding folded in
            idx = _fields(sd[1], pad, out_len, k, stride, dil)
            if idx is None:
                continue
            g.initializer.append(numpy_helper.from_array(idx, names["fields_idx"]))
            new = [helper.make_node("Gather", [src, names["fields_idx"]], [names["fields"]], axis=1)]  # [N, L', K]
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, 0, :].T), names["wt"]))  # [K, Co]
        new.append(helper.make_node("MatMul", [names["fields"], names["wt"]], [names["mm"]]))  # [N, L', Co]
        last = names["mm"]
        if bias is not None:
            g.initializer.append(numpy_helper.from_array(bias.reshape(co).astype(np.float32), names["bias"]))
            new.append(helper.make_node("Add", [last, names["bias"]], [names["mmb"]]))
            last = names["mmb"]
        before[id(n)] = new
        n.op_type, n.domain = "Transpose", ""  # [N, L', Co] -> [N, Co, L']: the conv's output, same name
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("perm", [0, 2, 1]))
        n.input[:] = [last]
        done += 1
    if before:
        insert_before(g, before)
    return done
