"""A small conv graph for the INT8 plan's tests (`test_int8_stem`, `test_float_storage`) and what they judge it by."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.graph import name_nodes
from edgeslim.onnxkit.session import session


def conv_gap_fc(w: dict[str, np.ndarray], stem: str = "conv0", size: int = 8) -> onnx.ModelProto:
    """x[1, C, size, size] -> Conv w0/b0 3x3 + ReLU -> Conv w1/b1 3x3 + ReLU -> GAP -> Flatten -> Gemm wf/bf (transB),
    nodes named (`stem` for the first conv)."""
    inits = [numpy_helper.from_array(np.asarray(w[k], np.float32), k) for k in ("w0", "b0", "w1", "b1", "wf", "bf")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1] * 4, kernel_shape=[3, 3], name=stem),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1] * 4, kernel_shape=[3, 3], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w["w0"].shape[1], size, size])
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w["wf"].shape[0]])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    name_nodes(m)
    return m


def run_feeds(m: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """`m`'s first output over every feed, concatenated on axis 0."""
    s = session(m.SerializeToString())
    return np.concatenate([s.run(None, f)[0] for f in feeds])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine over every value of `a` and `b`."""
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
