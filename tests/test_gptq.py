"""GPTQ rounding of int8 weight codes (quant.gptq): lower output error than round-to-nearest on the calibration
inputs, codes in int8 that the ordinary per-channel quantizer gives back exactly (same decode chain)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.session import session
from edgeslim.onnxkit.weight_only import _int8 as int8_codes
from edgeslim.quant import gptq
from edgeslim.quant.qdq_float import weight_axes

F = TensorProto.FLOAT


def _model(seed: int = 0) -> onnx.ModelProto:
    """x[1,6,9,11] -> Conv 6->16 3x3 (pads 1, stride 2, dilation 1) -> Relu -> Conv 16->16 3x3 (dilation 2)
    -> Transpose to channels-last -> MatMul 16->24 -> y. Input channels differ in scale by 50x (what folding a
    per-channel Mul into a conv does), which is where rounding against the inputs pays."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 6, 3, 3)) * 0.3).astype(np.float32), "w0"),
        numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((16, 24)) * 0.3).astype(np.float32), "wm"),
        numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3))).astype(np.float32), "wd"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4, strides=[2, 2], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[2] * 4, dilations=[2, 2], name="conv1"),
        helper.make_node("Transpose", ["c1"], ["t"], perm=[0, 2, 3, 1], name="tr"),
        helper.make_node("MatMul", ["t", "wm"], ["y"], name="mm"),
        helper.make_node("Slice", ["c1", "s0", "s1", "s2"], ["c8"], name="sl"),
        helper.make_node("Conv", ["c8", "wd"], ["z"], group=8, name="dw"),  # depthwise: skipped
    ]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("s0", [0]), ("s1", [8]), ("s2", [1]))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 6, 9, 11])],
                          [helper.make_tensor_value_info("y", F, None), helper.make_tensor_value_info("z", F, None)],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    chan = np.geomspace(0.05, 2.5, 6).astype(np.float32)[None, :, None, None]
    return [{"x": rng.standard_normal((1, 6, 9, 11)).astype(np.float32) * chan} for _ in range(n)]


def _with(m: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return out


def _error(m: onnx.ModelProto, ref: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    """Relative squared error of output y over the feeds."""
    a, b = session(m.SerializeToString()), session(ref.SerializeToString())
    num = den = 0.0
    for f in feeds:
        y, r = a.run(["y"], f)[0], b.run(["y"], f)[0]
        num, den = num + float(((y - r) ** 2).sum()), den + float((r**2).sum())
    return num / den


def test_gptq_output_error_below_round_to_nearest_and_codes_reproduce() -> None:
    m, cal = _model(), _feeds(24, 1)
    rounded = gptq.grid_weights(m, cal, min_elements=16)
    assert set(rounded) == {"conv0", "conv1", "mm"}  # the depthwise conv is skipped
    nodes = {n.name: n for n in m.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    rtn, grid, wins = {}, {}, 0
    for name, r in rounded.items():
        n = nodes[name]
        w, axes = inits[n.input[1]], weight_axes(n, 1)
        assert axes is not None and r.weight.shape == w.shape and r.weight.dtype == np.float32
        assert r.error <= r.rtn_error, (name, r)  # per layer, on the calibration rows (else nearest codes kept)
        wins += r.error < 0.7 * r.rtn_error
        q, s = int8_codes(r.weight, axes)  # the ordinary quantizer gives back GPTQ's codes and the RTN scale
        assert q.dtype == np.int8 and int(np.abs(q.astype(np.int32)).max()) == 127
        np.testing.assert_allclose(q * s, r.weight, rtol=1e-6, atol=0)
        _q0, s0 = int8_codes(w, axes)
        np.testing.assert_allclose(s, s0, rtol=1e-6)  # same per-channel scale as round-to-nearest
        q0, s0 = int8_codes(w, axes)
        rtn[n.input[1]], grid[n.input[1]] = q0 * s0, r.weight
    assert wins >= 2, rounded
    for feeds in (cal, _feeds(16, 2)):  # calibration and unseen inputs: the real output error, through ORT
        e_rtn, e_gq = _error(_with(m, rtn), m, feeds), _error(_with(m, grid), m, feeds)
        assert e_gq < 0.85 * e_rtn, (e_gq, e_rtn)


def test_conv_rows_are_the_im2col_of_the_conv_and_hessians_stream() -> None:
    m, feeds = _model(), _feeds(5, 3)
    nodes = {n.name: n for n in m.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s = session(m.SerializeToString())
    f = feeds[0]
    # conv0 (stride 2, pads 1) by rows @ W^T equals ORT's conv output
    x = gptq._rows(nodes["conv0"], f["x"], inits["w0"].shape)
    ref = session(_outputs(m, ["c0"]).SerializeToString()).run(["c0"], f)[0]  # [1, 16, 5, 6]
    got = (x @ inits["w0"].reshape(16, -1).T).reshape(1, ref.shape[2], ref.shape[3], 16).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # Hessians accumulated feed by feed equal the one of all rows at once
    hs = gptq.hessians(m, feeds, [nodes["conv1"]], {"conv1": inits["w1"]}, max_rows=10**6)
    r0 = session(_outputs(m, ["r0"]).SerializeToString())
    rows = np.concatenate([gptq._rows(nodes["conv1"], r0.run(["r0"], f)[0], inits["w1"].shape) for f in feeds])
    np.testing.assert_allclose(hs["conv1"], rows.T.astype(np.float64) @ rows / len(rows), rtol=1e-6, atol=1e-9)
    assert s.run(["y"], f)[0].shape == (1, 5, 6, 24)


def _outputs(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    from edgeslim.onnxkit.graph import with_outputs
    return with_outputs(m, names)


def test_with_grid_points_only_the_named_nodes_at_rounded_weights() -> None:
    m = _model()
    rounded = gptq.grid_weights(m, _feeds(8, 1), {"conv1"}, min_elements=16)
    assert set(rounded) == {"conv1"}
    assert gptq.with_grid(m, rounded, ["conv0"]) is m  # nothing to change: the model itself
    g = gptq.with_grid(m, rounded, ["conv1", "conv0"])
    inits = {t.name: numpy_helper.to_array(t) for t in g.graph.initializer}
    n = next(x for x in g.graph.node if x.name == "conv1")
    np.testing.assert_array_equal(inits[n.input[1]], rounded["conv1"].weight)
    assert next(x for x in g.graph.node if x.name == "conv0").input[1] == "w0" and "w1" in inits
    assert "GPTQ rounding of 1 layers" in gptq.rounding_note(rounded)


def test_weight_only_stores_gptq_codes_with_the_same_decode_chain() -> None:
    from edgeslim.onnxkit.weight_only import weight_only
    m, cal = _model(), _feeds(24, 1)
    rounded = gptq.grid_weights(m, cal, min_elements=16)
    by_init = gptq.by_initializer(m, rounded)
    assert set(by_init) == {"w0", "w1", "wm"}
    plain, n0 = weight_only(m, "int8", min_elements=16)
    gq, n1 = weight_only(m, "int8", min_elements=16, rounded=by_init)
    assert n0 == n1 == 4  # w0, w1, wm, wd
    for m8 in (plain, gq):  # int8 codes -> Cast -> Mul by the per-channel scale, for every weight
        inits = {t.name: t for t in m8.graph.initializer}
        assert all(inits[w + "__q8"].data_type == TensorProto.INT8 for w in ("w0", "w1", "wm", "wd"))
        ops = {n.output[0]: n.op_type for n in m8.graph.node}
        assert all(ops[w] == "Mul" and ops[w + "__f"] == "Cast" for w in ("w0", "w1", "wm"))
    codes = numpy_helper.to_array(next(t for t in gq.graph.initializer if t.name == "w1__q8"))
    q, _s = int8_codes(rounded["conv1"].weight, (0,))
    np.testing.assert_array_equal(codes, q)
    assert len(gq.SerializeToString()) == len(plain.SerializeToString())  # same format, same size
    held = _feeds(16, 2)
    assert _error(gq, m, held) < 0.85 * _error(plain, m, held)


def test_layers_in_groups_under_the_hessian_budget_give_the_same_codes(monkeypatch) -> None:
    m, cal = _model(), _feeds(6, 1)
    whole = gptq.grid_weights(m, cal, min_elements=16)
    nodes = [n for n in m.graph.node if n.name in whole]
    weights = {n.name: numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == n.input[1]))
               for n in nodes}
    assert len(gptq._groups(nodes, weights)) == 1
    # K: conv0 54, conv1 144, mm 16 (graph order); a budget of conv1's + mm's Hessians: [conv0], [conv1, mm]
    monkeypatch.setattr(gptq, "H_BYTES", 8 * (144 * 144 + 16 * 16))
    assert [[n.name for n in g] for g in gptq._groups(nodes, weights)] == [["conv0"], ["conv1", "mm"]]
    split = gptq.grid_weights(m, cal, min_elements=16)
    for k, r in whole.items():
        np.testing.assert_array_equal(split[k].weight, r.weight)
