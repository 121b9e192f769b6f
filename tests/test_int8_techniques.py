"""The INT8 techniques on tiny generated graphs: BatchNorm/affine folding with Constant-node weights,
hard-swish fusion, cross-layer equalisation, bias correction, keeping layers float in a QDQ model, and
the per-layer choices (fidelity by output sensitivity, speed by injected timings)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.bnfold import fold_batchnorm, fold_into_convs
from edgeslim.onnxkit.graph import name_nodes, op_counts
from edgeslim.onnxkit.patterns import fuse_hardswish
from edgeslim.onnxkit.session import session
from edgeslim.quant import calib_select
from edgeslim.quant.bias_correction import correct_biases, output_shift
from edgeslim.quant.cle import channel_range_spread, equalize
from edgeslim.quant.int8_plan import Int8Options, quantize
from edgeslim.quant.layer_select import UnitTime, fidelity_fallback, speed_fallback, units
from edgeslim.quant.qdq_float import keep_float, quantized_nodes

F = TensorProto.FLOAT


def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr, np.float32), name + "_t"),
                            name=name + "_c")


def _model(nodes, inits=(), opset: int = 13, cin: int = 3, hw: int = 8, out: str = "y") -> onnx.ModelProto:
    y = onnx.ValueInfoProto(name=out)
    y.type.tensor_type.elem_type = F
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", F, [1, cin, hw, hw])], [y], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    name_nodes(m)
    return m


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m.SerializeToString()).run(None, {"x": x})[0]


def _x(seed: int = 0, cin: int = 3, hw: int = 8, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, cin, hw, hw)).astype(np.float32)


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def test_batchnorm_folds_with_constant_node_weights() -> None:
    rng = np.random.default_rng(0)
    c = 8  # small vectors: exporters keep these as Constant nodes, which ORT's own fusion skips
    nodes = [
        const("w", rng.standard_normal((c, 3, 3, 3))), const("b", rng.standard_normal(c)),
        const("g", rng.uniform(0.5, 2, c)), const("be", rng.standard_normal(c)),
        const("mu", rng.standard_normal(c)), const("var", rng.uniform(0.5, 2, c)),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"], epsilon=1e-3),
        # a ConvTranspose without bias, then its own BatchNorm
        const("wt", rng.standard_normal((c, 4, 2, 2))),
        const("g2", rng.uniform(0.5, 2, 4)), const("be2", rng.standard_normal(4)),
        const("mu2", rng.standard_normal(4)), const("var2", rng.uniform(0.5, 2, 4)),
        helper.make_node("ConvTranspose", ["bn", "wt"], ["t"], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["t", "g2", "be2", "mu2", "var2"], ["y"]),
    ]
    m = _model(nodes)
    x = _x()
    ref = _run(m, x)
    folded = _copy(m)
    assert fold_batchnorm(folded) == 2
    assert "BatchNormalization" not in op_counts(folded)
    np.testing.assert_allclose(_run(folded, x), ref, rtol=1e-5, atol=1e-5)


def test_affine_and_hardswish_fold_into_convs() -> None:
    """PP-OCRv4-style: Mul(scale, conv) + shift after a conv, decomposed hard-swish, then a scalar affine
    before a 1x1 conv: all of it folds, outputs unchanged."""
    rng = np.random.default_rng(1)
    nodes = [
        const("w1", rng.standard_normal((4, 3, 3, 3))), const("b1", rng.standard_normal(4)),
        const("s", [1.7]), const("t", [0.3]), const("three", 3.0), const("zero", 0.0), const("six", 6.0),
        const("s2", [0.5]), const("w2", rng.standard_normal((6, 4, 1, 1))),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "c1"], ["m1"]),  # constant first: ORT's Conv+Mul fusion misses it
        helper.make_node("Add", ["m1", "t"], ["a1"]),
        helper.make_node("Add", ["a1", "three"], ["h1"]),
        helper.make_node("Clip", ["h1", "zero", "six"], ["h2"]),
        helper.make_node("Mul", ["a1", "h2"], ["h3"]),
        helper.make_node("Div", ["h3", "six"], ["hs"]),
        helper.make_node("Mul", ["s2", "hs"], ["m2"]),
        helper.make_node("Conv", ["m2", "w2"], ["y"]),
    ]
    m = _model(nodes)
    x = _x(1)
    ref = _run(m, x)
    out = _copy(m)
    counts = fold_into_convs(out)
    assert counts["affine"] == 3  # Mul and Add after conv 1, Mul before conv 2
    assert fuse_hardswish(out) == 1
    ops = op_counts(out)
    assert ops == {"Conv": 2, "HardSigmoid": 1, "Mul": 1}, ops  # opset 13: x * HardSigmoid(x, 1/6, 1/2)
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-4, atol=1e-4)
    # opset 14 has HardSwish itself
    m14 = onnx.version_converter.convert_version(m, 14)
    fold_into_convs(m14)
    assert fuse_hardswish(m14) == 1 and op_counts(m14).get("HardSwish") == 1
    np.testing.assert_allclose(_run(m14, x), ref, rtol=1e-4, atol=1e-4)


def _uneven_pair(seed: int = 2) -> onnx.ModelProto:
    """conv -> relu -> conv with output channels of very different weight ranges (as after BN folding)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)) * np.logspace(-2, 1, 8)[:, None, None, None]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, inits)


def test_cle_keeps_outputs_and_evens_channel_ranges() -> None:
    m = _uneven_pair()
    x = _x(2)
    ref = _run(m, x)
    before = channel_range_spread(m)
    eq = _copy(m)
    assert equalize(eq) == 1
    np.testing.assert_allclose(_run(eq, x), ref, rtol=1e-4, atol=1e-4)
    after = channel_range_spread(eq)
    assert after < 0.5 * before, (before, after)


def _toy_conv(seed: int = 3) -> onnx.ModelProto:
    """A 1x1 conv reading 4 positive channels: per-channel rounding errors do not average out."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b")]
    return _model([helper.make_node("Conv", ["x", "w", "b"], ["y"])], inits, cin=4)


def test_bias_correction_reduces_mean_output_error() -> None:
    m = _toy_conv()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.uniform(0, 1, (1, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    ranges = calib_select.minmax(calib_select.collect(m, feeds))

    def mean_err(model: onnx.ModelProto) -> float:
        q = quantize(model, feeds, "u8s8-rr-pc", ranges, Int8Options())
        return float(np.abs(output_shift(m, q, ["y"], feeds)["y"]).mean())  # per-channel mean drift vs FP32

    corrected, n = correct_biases(m, feeds, ranges, qmax=64)  # reduce_range: weights in [-64, 64]
    assert n == 1
    before, after = mean_err(m), mean_err(corrected)
    assert after < 0.5 * before, (before, after)


def _qdq_chain(feeds):
    m = _uneven_pair(5)
    ranges = calib_select.minmax(calib_select.collect(m, feeds))
    return m, quantize(m, feeds, "u8s8-pc", ranges, Int8Options())


def test_keep_float_removes_qdq_between_float_layers_and_restores_outputs() -> None:
    feeds = [{"x": _x(k)} for k in range(4)]
    m, q = _qdq_chain(feeds)
    qn = [n.name for n in quantized_nodes(q)]
    assert len(qn) >= 2
    all_float = keep_float(q, set(qn), exact=set(qn), float_model=m)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in all_float.graph.node)
    np.testing.assert_allclose(_run(all_float, feeds[0]["x"]), _run(m, feeds[0]["x"]), rtol=1e-3, atol=1e-3)
    # int8 weights kept for a float layer: stored as int8 + Cast/Mul, not as DequantizeLinear
    w8 = keep_float(q, {qn[-1]}, min_elements=16, float_model=m)
    assert any(t.data_type == TensorProto.INT8 for t in w8.graph.initializer)
    assert any(n.op_type == "Cast" for n in w8.graph.node)


def test_units_and_speed_choice_keep_slow_layer_float() -> None:
    feeds = [{"x": _x(k)} for k in range(4)]
    m, q = _qdq_chain(feeds)
    us = units(q)
    assert len(us.quant) == 2  # conv1 (+relu) and conv2
    first, second = list(us.quant)

    def profiler(models: dict[str, bytes]) -> dict[str, dict[str, float]]:
        """Injected per-node kernel times (us): conv1 is slower in INT8, conv2 faster."""
        cur = onnx.load_from_string(models["int8"])
        int8_nodes = {n.name for n in quantized_nodes(cur)}
        fp = {n.name: 100.0 for n in m.graph.node if n.op_type == "Conv"}
        q8 = {n.name: (150.0 if n.name == first else 40.0) for n in cur.graph.node
              if n.name in int8_nodes and n.op_type == "Conv"}
        return {"fp32": fp, "int8": q8}

    sc = speed_fallback(q, m, us, [], profiler)
    assert sc.slow_units == [first]
    assert sc.decided[first] == UnitTime(100.0, 150.0)
    assert second not in sc.slow_units and sc.times[second].int8_us < sc.times[second].fp32_us


def test_fidelity_fallback_keeps_only_the_sensitive_layer_float() -> None:
    feeds = [{"x": _x(k)} for k in range(4)]
    m, q = _qdq_chain(feeds)
    us = units(q)
    sensitive = list(us.quant)[1]

    def evaluate(model: onnx.ModelProto, n: int) -> float:
        """Injected fidelity: the outputs break exactly when the sensitive conv runs in INT8 (its weight
        arrives through DequantizeLinear)."""
        dq = {o for x in model.graph.node if x.op_type == "DequantizeLinear" for o in x.output}
        int8 = {x.name for x in model.graph.node if x.op_type == "Conv" and x.input[1] in dq}
        return 0.90 if sensitive in int8 else 0.999

    fb = fidelity_fallback(q, m, us, evaluate, 0.995)
    assert fb.float_units == [sensitive] and fb.met
    assert fb.sensitivity[sensitive] > fb.sensitivity[list(us.quant)[0]]


def test_adaround_beats_nearest_rounding_on_the_layer_output() -> None:
    import torch

    from edgeslim.quant.adaround import _layer_fn, adaround_weight

    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    x = torch.tensor(rng.uniform(0, 1, (4, 4, 10, 10)).astype(np.float32))
    fn = _layer_fn(node, torch.tensor(w))
    qmax = 7  # 4-bit weights make the rounding choice matter
    s = np.abs(w).reshape(8, -1).max(1).reshape(8, 1, 1, 1) / qmax
    nearest = np.round(w / s) * s
    learned = adaround_weight(fn, x, x, w, 0, qmax, iters=150)
    assert np.allclose(learned / s, np.round(learned / s), atol=1e-4)  # still on the int grid
    assert np.allclose(np.abs(learned).reshape(8, -1).max(1), np.abs(w).reshape(8, -1).max(1))  # same scales
    with torch.no_grad():
        y = fn(x, torch.tensor(w))
        e_near = float(((fn(x, torch.tensor(nearest)) - y) ** 2).mean())
        e_ada = float(((fn(x, torch.tensor(learned)) - y) ** 2).mean())
    assert e_ada < 0.8 * e_near, (e_near, e_ada)


def test_keep_float_with_several_graph_outputs_defines_each_once() -> None:
    """Two conv heads, each a graph output (a detector's score and box maps): putting both back to float
    must not leave a DequantizeLinear that defines an output's name a second time (layout_cdla, issue 23)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("Conv", ["x", f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1], name=f"head{i}") for i in range(2)]
    outs = [helper.make_tensor_value_info(f"y{i}", F, None) for i in range(2)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    name_nodes(m)
    feeds = [{"x": _x(k)} for k in range(4)]
    stats = calib_select.collect(m, feeds)
    q = quantize(m, feeds, "u8s8-pc", calib_select.minmax(stats), Int8Options())
    f = keep_float(q, {n.name for n in quantized_nodes(q)}, float_model=m)
    defined = [o for n in f.graph.node for o in n.output]
    assert defined.count("y0") == 1 and defined.count("y1") == 1
    got = session(f.SerializeToString()).run(None, feeds[0])
    want = session(m.SerializeToString()).run(None, feeds[0])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)
