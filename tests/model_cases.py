"""Small generated ONNX graphs, one per kind of model users bring (the shapes real exports have): a fixed
batch, symbolic dims, several inputs (int64 token ids + recurrent state), a scalar input, a feature-map
output, several outputs, an `If` subgraph. Each builder writes the model into `folder` and returns its path
and the options a command needs for it (`--shape ...` where a dim is symbolic and unspecified)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def _save(g: onnx.GraphProto, path: Path, opset: int = 13) -> Path:
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def fixed_batch(folder: Path) -> tuple[Path, list[str]]:
    """[1, 8, 32, 32] -> conv -> pool -> [1, 10] scores: the batch is fixed at 1."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "cw"), numpy_helper.from_array(_w(rng, 8, 10), "fw")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fw"], ["y"])]
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", F, [1, 8, 32, 32])],
                          [helper.make_tensor_value_info("y", F, [1, 10])], inits)
    return _save(g, folder / "fixed_batch.onnx"), []


def symbolic(folder: Path) -> tuple[Path, list[str]]:
    """[N, 3, H, W] -> conv -> a feature map [N, 4, H, W]: H and W need --shape (or --inputs)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "cw")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "symbolic", [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", F, ["N", 4, "H", "W"])], inits)
    return _save(g, folder / "symbolic.onnx"), ["--shape", "x=1,3,16,24"]


def tokens_and_state(folder: Path) -> tuple[Path, list[str]]:
    """int64 token ids [B, 8] and a recurrent state [1, B, 16] -> scores [B, 5] and the new state."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(_w(rng, 128, 16), "emb"), numpy_helper.from_array(_w(rng, 16, 5), "fw"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),                  # [B, 8, 16]
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),  # [B, 16]
             helper.make_node("Squeeze", ["state", "ax0"], ["s"]),               # [B, 16]
             helper.make_node("Add", ["m", "s"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "fw"], ["y"]),
             helper.make_node("Unsqueeze", ["t", "ax0"], ["state_out"])]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", I64, ["B", 8]),
                                            helper.make_tensor_value_info("state", F, [1, "B", 16])],
                          [helper.make_tensor_value_info("y", F, ["B", 5]),
                           helper.make_tensor_value_info("state_out", F, [1, "B", 16])], inits)
    return _save(g, folder / "tokens_state.onnx"), []


def scalar_input(folder: Path) -> tuple[Path, list[str]]:
    """x [1, 16] and an int64 scalar sample rate `sr`: y = x @ W * (sr / 16000)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(_w(rng, 16, 4), "fw"), numpy_helper.from_array(np.array(16000.0, np.float32), "k")]
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=F), helper.make_node("Div", ["srf", "k"], ["g"]),
             helper.make_node("MatMul", ["x", "fw"], ["z"]), helper.make_node("Mul", ["z", "g"], ["y"])]
    g = helper.make_graph(nodes, "scalar", [helper.make_tensor_value_info("x", F, [1, 16]),
                                            helper.make_tensor_value_info("sr", I64, [])],
                          [helper.make_tensor_value_info("y", F, [1, 4])], inits)
    return _save(g, folder / "scalar.onnx"), []


def feature_map(folder: Path) -> tuple[Path, list[str]]:
    """[1, 3, 16, 16] -> two convs -> a feature map [1, 6, 16, 16] (not class scores)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(_w(rng, 8, 3, 3, 3), "w1"), numpy_helper.from_array(_w(rng, 6, 8, 1, 1), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "fmap", [helper.make_tensor_value_info("x", F, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", F, [1, 6, 16, 16])], inits)
    return _save(g, folder / "feature_map.onnx"), []


def several_outputs(folder: Path) -> tuple[Path, list[str]]:
    """[N, 32] -> scores [N, 10] and an embedding [N, 32] and a scalar norm."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(_w(rng, 32, 32), "w1"), numpy_helper.from_array(_w(rng, 32, 10), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["emb"]),
             helper.make_node("MatMul", ["emb", "w2"], ["scores"]),
             helper.make_node("ReduceSumSquare", ["emb"], ["norm"], keepdims=0)]
    g = helper.make_graph(nodes, "multi", [helper.make_tensor_value_info("x", F, ["N", 32])],
                          [helper.make_tensor_value_info("scores", F, ["N", 10]),
                           helper.make_tensor_value_info("emb", F, ["N", 32]),
                           helper.make_tensor_value_info("norm", F, [])], inits)
    return _save(g, folder / "multi_out.onnx"), []


def if_subgraph(folder: Path) -> tuple[Path, list[str]]:
    """`If` on the sign of the input's sum; each branch keeps its weight as a Constant inside its body."""
    rng = np.random.default_rng(6)

    def branch(name: str) -> onnx.GraphProto:
        w = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(_w(rng, 32, 32)))
        return helper.make_graph([w, helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", F, ["N", 32])])

    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["z"], then_branch=branch("then"), else_branch=branch("else")),
             helper.make_node("Relu", ["z"], ["y"])]
    g = helper.make_graph(nodes, "ifm", [helper.make_tensor_value_info("x", F, ["N", 32])],
                          [helper.make_tensor_value_info("y", F, ["N", 32])], inits)
    return _save(g, folder / "if_model.onnx"), []


CASES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "fixed_batch": fixed_batch, "symbolic": symbolic, "tokens_state": tokens_and_state, "scalar": scalar_input,
    "feature_map": feature_map, "several_outputs": several_outputs, "if_subgraph": if_subgraph,
}
