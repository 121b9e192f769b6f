"""A tiny recurrent ONNX model with the packed interface of `run --inputs` (`test_val_score_budget`,
`test_int8_plan_streams`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.graph import name_nodes


def packed_rnn(a: np.ndarray, bx: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """'packed' [N, D + H] (data x, state h) -> 'score' [N, K] = h_new @ w and 'h_new' [N, H] = h @ a +
    tanh(x @ bx), with D, H, K read from `bx` [D, H] and `w` [H, K]; nodes named."""
    d, h = bx.shape
    nodes = [helper.make_node("Slice", ["packed", "s0", "s1", "ax"], ["x"]),
             helper.make_node("Slice", ["packed", "s1", "s2", "ax"], ["h"]),
             helper.make_node("MatMul", ["x", "bx"], ["xb"]), helper.make_node("Tanh", ["xb"], ["tx"]),
             helper.make_node("MatMul", ["h", "a"], ["ha"]), helper.make_node("Add", ["ha", "tx"], ["h_new"]),
             helper.make_node("MatMul", ["h_new", "w"], ["score"])]
    inits = [numpy_helper.from_array(np.array([v], np.int64), k) for k, v in
             (("s0", 0), ("s1", d), ("s2", d + h), ("ax", 1))]
    inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (("a", a), ("bx", bx), ("w", w))]
    g = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("packed", TensorProto.FLOAT, ["n", d + h])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", w.shape[1]]),
                           helper.make_tensor_value_info("h_new", TensorProto.FLOAT, ["n", h])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    name_nodes(m)
    return m
