"""`onnxkit.session.session` on a serialized model whose `If` body is not topologically sorted (what a rewrite
beside an `If` can leave; ONNX Runtime refuses it): sorted and loaded, same outputs; other load failures stay
one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.session import session


def _if_model(sorted_: bool) -> onnx.ModelProto:
    body = [h.make_node("Abs", ["y"], ["a"]), h.make_node("Identity", ["a"], ["t"])]
    then = h.make_graph(body if sorted_ else body[::-1], "then", [],  # unsorted: reads `a` before its producer
                        [h.make_tensor_value_info("t", T.FLOAT, [2])])
    other = h.make_graph([h.make_node("Neg", ["y"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, [2])])
    make_y = h.make_node("Relu", ["x"], ["y"])
    cond = h.make_node("ReduceSum", ["x"], ["s"], keepdims=0)
    gt = h.make_node("Greater", ["s", "zero"], ["c"])
    branch = h.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)
    nodes = [make_y, cond, gt, branch]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2])],
                     [h.make_tensor_value_info("out", T.FLOAT, [2])],
                     [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_a_model_whose_if_reads_a_later_node_is_sorted_and_loads() -> None:
    x = np.array([1.0, -3.0], np.float32)
    want = session(_if_model(True).SerializeToString()).run(None, {"x": x})[0]
    got = session(_if_model(False).SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(got, want) and np.array_equal(want, -np.maximum(x, 0))


def test_a_model_ort_cannot_load_is_one_line() -> None:
    with pytest.raises(EdgeslimError, match=r"^<in-memory model>: ONNX Runtime cannot load the model"):
        session(b"not a model")
