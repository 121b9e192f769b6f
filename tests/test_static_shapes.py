"""Shape reads of static dims folded into constants (`onnxkit.static_shapes`): the reads of the channel and
length axes become constants, the batch axis stays live, and the graph gives the same outputs at every batch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.session import session
from edgeslim.onnxkit.static_shapes import fold_static_shapes


def _graph() -> onnx.ModelProto:
    """x [n, 4, 6] -> reshape to [n, 24] with the target built from Shape->Gather chains (batch, 4, 6)."""
    i = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i012"], ["s3"], axis=0),    # a gathered shape vector
        helper.make_node("Gather", ["s3", "i0"], ["b"], axis=0),      # batch: stays live
        helper.make_node("Gather", ["s3", "i1"], ["c"], axis=0),      # 4: static
        helper.make_node("Gather", ["s", "i2"], ["w"], axis=0),       # 6: static
        helper.make_node("Mul", ["c", "w"], ["cw"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["cw", "ax0"], ["cw1"]),
        helper.make_node("Concat", ["b1", "cw1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 24])],
                          [i("i012", [0, 1, 2]), i("i0", 0), i("i1", 1), i("i2", 2), i("ax0", [0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_static_reads_fold_batch_stays():
    m = _graph()
    before = onnx.load_from_string(m.SerializeToString())
    n = fold_static_shapes(m)
    ops = [x.op_type for x in m.graph.node]
    assert n == 2  # c and w; the batch read b is not static
    assert ops.count("Gather") == 2 and "Shape" in ops  # s -> s3 -> b still read at run time
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 4, 6)).astype(np.float32)
        a = session(before.SerializeToString()).run(None, {"x": x})[0]
        b = session(m.SerializeToString()).run(None, {"x": x})[0]
        assert a.shape == (batch, 24) and np.array_equal(a, b)


def test_nothing_static_changes_nothing():
    m = _graph()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"  # channels symbolic too
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "w"
    data = m.SerializeToString()
    assert fold_static_shapes(m) == 0 and m.SerializeToString() == data
