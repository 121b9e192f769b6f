"""Small ONNX graphs for the `edgeslim optimize` tests, built with onnx.helper (no tests in this file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)


def _save(g: onnx.GraphProto, path: Path, opset: int) -> Path:
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeslim-tests")
    m.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_t"), name=name + "_c")


def multi_input_mlp(path: Path, seed: int = 0) -> Path:
    """Inputs a, b [N, 16] (dynamic batch); outputs logits [N, 4] and feat [N, 32]; a Sin the quantizer skips."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 16, 32), "w1"), numpy_helper.from_array(_w(rng, 16, 32), "w2"),
             numpy_helper.from_array(_w(rng, 32, 4), "w3"), numpy_helper.from_array(np.zeros(4, np.float32), "b3")]
    nodes = [
        helper.make_node("MatMul", ["a", "w1"], ["ha"], name="mm_a"),
        helper.make_node("MatMul", ["b", "w2"], ["hb"], name="mm_b"),
        helper.make_node("Add", ["ha", "hb"], ["h"], name="add"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Sin", ["hr"], ["feat"], name="sin"),
        helper.make_node("MatMul", ["feat", "w3"], ["l0"], name="mm_out"),
        helper.make_node("Add", ["l0", "b3"], ["logits"], name="bias"),
    ]
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("a", F, ["batch", 16]), helper.make_tensor_value_info("b", F, ["batch", 16])],
        [helper.make_tensor_value_info("logits", F, ["batch", 4]), helper.make_tensor_value_info("feat", F, ["batch", 32])],
        inits,
    )
    return _save(g, path, 17)


def const_convnet(path: Path, opset: int = 11, hw: int | str = 8, seed: int = 0) -> Path:
    """Paddle-style export: conv weights as Constant nodes, opset 11, input [N, 1, hw, hw]."""
    rng = np.random.default_rng(seed)
    nodes = [
        const("cw1", _w(rng, 16, 1, 3, 3)), const("cb1", np.zeros(16, np.float32)),
        const("cw2", _w(rng, 16, 16, 3, 3)), const("fw", _w(rng, 16, 10)),
        helper.make_node("Conv", ["x", "cw1", "cb1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "cw2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "fw"], ["y"], name="fc"),
    ]
    dims = ["N", 1, hw, hw] if isinstance(hw, int) else ["N", 1, hw, hw]
    g = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", F, dims)],
                          [helper.make_tensor_value_info("y", F, ["N", 10])])
    return _save(g, path, opset)


def if_model(path: Path, seed: int = 0) -> Path:
    """`If` on a bool input; each branch holds its own weight as a Constant node inside the subgraph."""
    rng = np.random.default_rng(seed)

    def branch(name: str, w: np.ndarray) -> onnx.GraphProto:
        return helper.make_graph(
            [const(f"{name}_w", w), helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_mm")],
            name, [], [helper.make_tensor_value_info(f"{name}_y", F, ["N", 32])])

    nodes = [
        helper.make_node("If", ["use_a"], ["z"], then_branch=branch("then", _w(rng, 32, 32)),
                         else_branch=branch("else", _w(rng, 32, 32)), name="if"),
        helper.make_node("Relu", ["z"], ["out"], name="relu"),
    ]
    g = helper.make_graph(nodes, "ifnet",
                          [helper.make_tensor_value_info("x", F, ["N", 32]),
                           helper.make_tensor_value_info("use_a", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("out", F, ["N", 32])])
    return _save(g, path, 17)


def loop_model(path: Path, seed: int = 0) -> Path:
    """`Loop` that applies tanh(x @ W) three times; W is a Constant inside the loop body."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [const("lw", _w(rng, 32, 32)),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("MatMul", ["x_in", "lw"], ["xm"], name="body_mm"),
         helper.make_node("Tanh", ["xm"], ["x_out"], name="body_tanh")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", F, None)],
    )
    nodes = [
        helper.make_node("Constant", [], ["trip"], value=numpy_helper.from_array(np.array(3, np.int64)), name="t"),
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)), name="c"),
        helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body, name="loop"),
    ]
    g = helper.make_graph(nodes, "loopnet", [helper.make_tensor_value_info("x", F, [1, 32])],
                          [helper.make_tensor_value_info("y", F, [1, 32])])
    return _save(g, path, 17)


def old_opset_model(path: Path) -> Path:
    """A valid opset-9 model: too old for `edgeslim optimize`."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "old",
                          [helper.make_tensor_value_info("x", F, [1, 4])], [helper.make_tensor_value_info("y", F, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    onnx.save(m, str(path))
    return path
