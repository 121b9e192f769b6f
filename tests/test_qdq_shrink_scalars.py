"""`quant.qdq_shrink.share_scalars` merges equal scalars but never a [1] tensor into a 0-d one: a Slice whose
`starts` became 0-d fails in ONNX Runtime ("Starts must be a 1-D array"; found on PP-OCR cls's INT8 plan)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.session import session
from edgeslim.quant.qdq_shrink import share_scalars


def test_share_scalars_keeps_one_element_vectors_apart_from_scalars():
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero_scalar"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([2], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(0, np.int64), "zero_scalar2")]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
             helper.make_node("Gather", ["x", "zero_scalar"], ["g"], axis=1),
             helper.make_node("Gather", ["x", "zero_scalar2"], ["g2"], axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s", "g", "g2")],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert share_scalars(m) == 1  # the two 0-d zeros, not the [1] starts
    assert [n.input[1] for n in m.graph.node] == ["starts", "zero_scalar", "zero_scalar"]
    out = session(m.SerializeToString()).run(None, {"x": np.arange(4, dtype=np.float32)[None]})
    assert out[0].tolist() == [[0.0, 1.0]] and out[1].tolist() == [0.0]
