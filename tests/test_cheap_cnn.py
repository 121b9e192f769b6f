"""2-D CNN rewrites of `onnxkit.cheap_cnn` (issue 23): on tiny generated graphs, each pattern is found, the
outputs stay equal within float rounding, the node count changes as intended, and a near-miss is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.cheap_ops import DEFAULT_RULES, cheapen_ops
from edgeslim.onnxkit.session import session

RNG = np.random.default_rng(0)


def _init(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _model(nodes, inits, shape=(1, 8, 6, 10), out_shape=None, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", shape[1], "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _conv(name: str, x: str, y: str, co: int, ci: int, k: int = 3) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = RNG.standard_normal((co, ci, k, k)).astype(np.float32) * 0.5
    b = RNG.standard_normal(co).astype(np.float32)
    return (helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[k // 2] * 4),
            [_init(f"{name}_w", w), _init(f"{name}_b", b)])


def _hswish_graph(three: float = 3.0, by_mul: bool = False, identity_consts: bool = False,
                  clip_read_twice: bool = False, opset: int = 17) -> onnx.ModelProto:
    conv, inits = _conv("c", "x", "t", 8, 8)
    inits += [_init("three", three), _init("zero", 0.0), _init("six", 6.0), _init("sixth", 1.0 / 6.0)]
    six = "six"
    nodes = [conv]
    if identity_consts:  # a re-export shares constants as Identity copies
        nodes.append(helper.make_node("Identity", ["six"], ["six_copy"]))
        six = "six_copy"
    nodes += [helper.make_node("Add", ["t", "three"], ["a"]),
              helper.make_node("Clip", ["a", "zero", six], ["c"]),
              helper.make_node("Mul", ["c", "t"], ["m"])]
    nodes.append(helper.make_node("Mul", ["m", "sixth"], ["h"]) if by_mul else helper.make_node("Div", ["m", six], ["h"]))
    if clip_read_twice:
        nodes.append(helper.make_node("Add", ["h", "c"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["y"]))
    return _model(nodes, inits, opset=opset)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m.SerializeToString(), threads=1).run(None, {"x": x})[0]


def _ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


@pytest.mark.parametrize("by_mul,identity_consts", [(False, False), (True, False), (False, True)])
def test_hardswish_fused_and_equal(by_mul: bool, identity_consts: bool) -> None:
    m = _hswish_graph(by_mul=by_mul, identity_consts=identity_consts)
    x = RNG.standard_normal((2, 8, 6, 10)).astype(np.float32) * 3  # both clip bounds reached
    ref = _run(m, x)
    counts = cheapen_ops(m, rules=("hardswish",))
    assert counts == {"hardswish": 1}
    assert _ops(m) == ["Conv", "HardSwish", "Relu"]  # Add, Clip, Mul, Div (and the Identity) gone
    np.testing.assert_allclose(_run(m, x), ref, atol=1e-5, rtol=0)
    assert "hardswish" in DEFAULT_RULES


@pytest.mark.parametrize("kw", [{"three": 2.0}, {"clip_read_twice": True}, {"opset": 13}])
def test_hardswish_near_miss_untouched(kw: dict) -> None:
    m = _hswish_graph(**kw)
    before = m.SerializeToString()
    assert cheapen_ops(m, rules=("hardswish",)) == {"hardswish": 0}
    assert m.SerializeToString() == before


def _se_graph() -> onnx.ModelProto:
    """x -> Conv 3x3 -> Relu -> SE (GlobalAveragePool -> 1x1 Conv -> Relu -> 1x1 Conv -> HardSigmoid -> Mul)."""
    conv, inits = _conv("c", "x", "t", 16, 8)
    sq, i1 = _conv("sq", "p", "s1", 4, 16, k=1)
    ex, i2 = _conv("ex", "r1", "s2", 16, 4, k=1)
    nodes = [conv, helper.make_node("Relu", ["t"], ["u"]), helper.make_node("GlobalAveragePool", ["u"], ["p"]),
             sq, helper.make_node("Relu", ["s1"], ["r1"]), ex,
             helper.make_node("HardSigmoid", ["s2"], ["hs"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["u", "hs"], ["y"])]
    return _model(nodes, inits + i1 + i2)


def test_se_gemm_rewrites_vector_convs() -> None:
    m = _se_graph()
    x = RNG.standard_normal((2, 8, 6, 10)).astype(np.float32)
    ref = _run(m, x)
    assert cheapen_ops(m, rules=("se_gemm",)) == {"se_gemm": 2}
    ops = _ops(m)
    assert ops.count("Conv") == 1 and ops.count("Gemm") == 2  # only the 3x3 conv on the image is left a Conv
    assert ops.count("Flatten") == 1 and ops.count("Reshape") == 1  # the Reshape/Flatten pair around Relu cancelled
    np.testing.assert_allclose(_run(m, x), ref, atol=1e-5, rtol=0)


def test_se_gemm_leaves_spatial_and_default_off() -> None:
    m = _hswish_graph()  # 3x3 conv on an image: not a [N, C, 1, 1] tensor
    before = m.SerializeToString()
    assert cheapen_ops(m, rules=("se_gemm",)) == {"se_gemm": 0}
    assert m.SerializeToString() == before
    assert "se_gemm" not in DEFAULT_RULES  # measured no faster (module docstring)
