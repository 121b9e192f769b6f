"""`onnxkit.affine_conv`: a constant per-channel Mul/Add chain on a conv's feature map becomes one 1x1 depthwise
Conv (same outputs, two nodes fewer); weight dequantizations, channel-last constants, maps not made by or read by
a conv, and graph outputs are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.affine_conv import affine_as_conv
from edgeslim.onnxkit.session import session

C = 4


def _graph(scale: np.ndarray, shift: np.ndarray, *, first: str = "Conv", last: str = "Conv",
           weight_dequant: bool = False) -> onnx.ModelProto:
    """x -> [Conv -> HardSwish | Transpose] -> Mul(scale) -> Add(shift) -> [padded depthwise Conv | Relu] -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(shift, "b"),
             numpy_helper.from_array(rng.normal(size=(C, 1, 3, 3)).astype(np.float32), "dw")]
    nodes = []
    if first == "Conv":
        inits.append(numpy_helper.from_array(rng.normal(size=(C, 3, 1, 1)).astype(np.float32), "w0"))
        nodes += [helper.make_node("Conv", ["x", "w0"], ["c0"]), helper.make_node("HardSwish", ["c0"], ["h"])]
    else:  # a map no conv makes
        nodes += [helper.make_node("Transpose", ["x"], ["h"], perm=[0, 1, 3, 2])]
    nodes += [helper.make_node("Mul", ["h", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"])]
    if last == "Conv":
        w = "dw"
        if weight_dequant:  # a weight's dequantization: Mul of a Cast of a constant, never a feature map
            inits.append(numpy_helper.from_array(np.ones((C, 1, 3, 3), np.int8), "q"))
            nodes += [helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", ["qf", "s"], ["wq"])]
            w = "wq"
        nodes.append(helper.make_node("Conv", ["a", w], ["y"], group=C, pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    cin = 3 if first == "Conv" else C
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("shape", [(1,), (C, 1, 1), (1, C, 1, 1)])
def test_affine_chain_becomes_one_depthwise_conv(shape):
    rng = np.random.default_rng(1)
    m = _graph(rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32))
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    want = _run(m, x)
    assert affine_as_conv(m) == 1
    ops = [n.op_type for n in m.graph.node]
    assert "Mul" not in ops and "Add" not in ops and ops.count("Conv") == 3
    dw = next(n for n in m.graph.node if n.op_type == "Conv" and n.output[0] == "a")
    assert {a.name: a.i for a in dw.attribute if a.name == "group"} == {"group": C}
    np.testing.assert_allclose(_run(m, x), want, rtol=1e-5, atol=1e-5)


def test_left_alone_where_it_is_not_a_conv_feature_map():
    rng = np.random.default_rng(2)
    s, b = np.float32([[[[0.5]]]]), np.float32([[[[0.1]]]])
    # (C,) broadcasts over the last axis (W), not the channels: not a per-channel affine
    m = _graph(rng.normal(size=(C,)).astype(np.float32), np.zeros(C, np.float32))
    assert affine_as_conv(m) == 0
    m = _graph(s, b, first="Transpose", last="Relu")  # no conv makes the map or reads the result
    assert affine_as_conv(m) == 0
    m = _graph(s, b, weight_dequant=True)  # the weight's Mul is skipped, the feature map's chain taken
    x = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    want = _run(m, x)
    assert affine_as_conv(m) == 1
    assert [n.op_type for n in m.graph.node].count("Mul") == 1  # the dequantization's
    np.testing.assert_allclose(_run(m, x), want, rtol=1e-5, atol=1e-5)
