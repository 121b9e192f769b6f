"""View-op and Slice chains collapsed (`onnxkit.view_chains`): each small graph loses the nodes the rule says,
keeps its output names, and ONNX Runtime gives bitwise the same outputs before and after at batch 1 and 3."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.session import session
from edgeslim.onnxkit.view_chains import collapse_views


def _i(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _model(nodes, x_dims, outputs: dict[str, list], inits=(), extra_inputs=()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims), *extra_inputs]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()]
    g = helper.make_graph(nodes, "g", ins, outs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _same(m: onnx.ModelProto, x_dims: list, extra: dict | None = None) -> tuple[int, list[str]]:
    """Collapse `m` in place after checking outputs; returns (nodes removed, op types left)."""
    before = m.SerializeToString()
    names = [o.name for o in m.graph.output]
    k = collapse_views(m)
    onnx.checker.check_model(m)
    assert [o.name for o in m.graph.output] == names
    for batch in (1, 3):
        shape = [batch if isinstance(d, str) else d for d in x_dims]
        feed = {"x": np.random.default_rng(batch).normal(size=shape).astype(np.float32), **(extra or {})}
        a = session(before).run(None, feed)
        b = session(m.SerializeToString()).run(None, feed)
        assert len(a) == len(b) and all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b))
    return k, [n.op_type for n in m.graph.node]


def test_squeeze_unsqueeze_pair_read_through():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Squeeze", ["r", "ax2"], ["s"]),       # [n, 4, 1] -> [n, 4]
             helper.make_node("Unsqueeze", ["s", "ax2"], ["u"]),     # back to [n, 4, 1]
             helper.make_node("Sigmoid", ["u"], ["y"])]
    m = _model(nodes, ["n", 4, 1], {"y": ["n", 4, 1]}, [_i("ax2", [2])])
    k, ops = _same(m, ["n", 4, 1])
    assert k == 2 and ops == ["Relu", "Sigmoid"] and m.graph.node[1].input[0] == "r"


def test_reshape_chain_with_symbolic_batch_becomes_one_reshape():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),                  # [n, 2, 8]
             helper.make_node("Shape", ["r"], ["sh"]),
             helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
             helper.make_node("Concat", ["b1", "c16"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["flat"]),    # [n, 16]
             helper.make_node("Unsqueeze", ["flat", "ax1"], ["u"]),     # [n, 1, 16]
             helper.make_node("Relu", ["u"], ["y"])]
    m = _model(nodes, ["n", 2, 8], {"y": ["n", 1, 16]}, [_i("i0", 0), _i("ax0", [0]), _i("ax1", [1]), _i("c16", [16])])
    k, ops = _same(m, ["n", 2, 8])
    assert k == 5 and ops == ["Relu", "Reshape", "Relu"]  # Shape, Gather, Unsqueeze, Concat, one view op gone
    target = next(t for t in m.graph.initializer if t.name == m.graph.node[1].input[1])
    assert numpy_helper.to_array(target).tolist() == [-1, 1, 16]


def test_two_symbolic_dims_keep_the_chain():
    nodes = [helper.make_node("Unsqueeze", ["x", "ax0"], ["a"]),
             helper.make_node("Unsqueeze", ["a", "ax0"], ["y"])]     # [1, 1, n, m]: no constant target
    m = _model(nodes, ["n", "m"], {"y": [1, 1, "n", "m"]}, [_i("ax0", [0])])
    assert collapse_views(m) == 0 and len(m.graph.node) == 2


def test_slice_of_slice_composed_and_identity_slice_dropped():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),                                # [n, 10, 6]
             helper.make_node("Slice", ["r", "s1", "e1", "a1"], ["p"]),              # [:, 2:9]
             helper.make_node("Slice", ["p", "s2", "e2", "a2", "st"], ["q"]),        # [:, 1:-1, :4]
             helper.make_node("Slice", ["q", "z", "big", "a0"], ["w"]),              # [0:huge] on the batch
             helper.make_node("Relu", ["w"], ["y"])]
    inits = [_i("s1", [2]), _i("e1", [9]), _i("a1", [1]), _i("s2", [1, 0]), _i("e2", [-1, 4]), _i("a2", [1, -1]),
             _i("st", [1, 1]), _i("z", [0]), _i("big", [2**62]), _i("a0", [0])]
    m = _model(nodes, ["n", 10, 6], {"y": ["n", 5, 4]}, inits)
    k, ops = _same(m, ["n", 10, 6])
    assert k == 2 and ops == ["Relu", "Slice", "Relu"]
    got = {t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer}
    s = m.graph.node[1]
    assert s.input[0] == "r" and (got[s.input[1]], got[s.input[2]], got[s.input[3]]) == ([3, 0], [8, 4], [1, 2])


def test_chain_into_graph_output_keeps_the_name():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),                   # [n, 3]
             helper.make_node("Unsqueeze", ["a", "ax1"], ["u"]),       # [n, 1, 3]
             helper.make_node("Squeeze", ["u", "ax1"], ["y"]),         # [n, 3]: a's shape, a graph output
             helper.make_node("Unsqueeze", ["a", "ax0"], ["v"]),       # [1, n, 3]
             helper.make_node("Unsqueeze", ["v", "ax0"], ["z"])]       # [1, 1, n, 3]: a new shape, an output
    m = _model(nodes, ["n", 3], {"y": ["n", 3], "z": [1, 1, "n", 3]}, [_i("ax0", [0]), _i("ax1", [1])])
    m.graph.value_info.extend([helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_value_info("u", TensorProto.FLOAT, ["n", 1, 3])])
    k, ops = _same(m, ["n", 3])
    assert k == 3 and ops == ["Relu", "Reshape"]
    assert list(m.graph.node[0].output) == ["y"] and list(m.graph.node[1].output) == ["z"]
    assert not m.graph.value_info  # a and u are made by no node any more: their shapes go too


def test_subgraph_reads_the_new_name():
    then = helper.make_graph([helper.make_node("Identity", ["u"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["u"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Squeeze", ["r", "ax1"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "ax1"], ["u"]),      # r's shape again; read inside the If only
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    m = _model(nodes, ["n", 1], {"y": ["n", 1]}, [_i("ax1", [1])], [cond])
    for flag in (True, False):
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        k, ops = _same(mm, ["n", 1], {"c": np.array(flag)})
        assert k == 2 and ops == ["Relu", "If"]


def test_transpose_of_size_one_axes_is_a_view():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),                         # [n, 1, 8]
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2]),    # [1, n, 8]: same element order
             helper.make_node("Unsqueeze", ["t", "ax0"], ["u"]),             # [1, 1, n, 8]
             helper.make_node("Transpose", ["r"], ["w"], perm=[0, 2, 1]),    # [n, 8, 1]: moves 8 past 1: a view too
             helper.make_node("Transpose", ["x2"], ["v"], perm=[1, 0]),      # [8, n]: a real transpose, kept
             helper.make_node("Relu", ["u"], ["y"])]
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["n", 8])
    m = _model(nodes, ["n", 1, 8], {"y": [1, 1, "n", 8], "w": ["n", 8, 1], "v": [8, "n"]}, [_i("ax0", [0])], [x2])
    extra = np.arange(8, dtype=np.float32).reshape(1, 8)
    before = m.SerializeToString()
    k = collapse_views(m)
    ops = [n.op_type for n in m.graph.node]
    assert k == 1 and ops.count("Transpose") == 2 and ops.count("Reshape") == 1  # t + u -> one Reshape of r
    for batch in (1, 3):
        feed = {"x": np.random.default_rng(batch).normal(size=(batch, 1, 8)).astype(np.float32),
                "x2": np.repeat(extra, batch, 0)}
        a, b = session(before).run(None, feed), session(m.SerializeToString()).run(None, feed)
        assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_reduce_over_size_one_axes_is_a_view():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),                              # [n, 1, 1]
             helper.make_node("Squeeze", ["s", "ax1"], ["q"]),                       # [n, 1]
             helper.make_node("ReduceMean", ["q"], ["r"], axes=[1], keepdims=0),     # [n]: a mean of one value
             helper.make_node("Unsqueeze", ["r", "ax1"], ["y"]),                     # [n, 1]
             helper.make_node("ReduceMean", ["x"], ["z"], axes=[0], keepdims=1)]     # over the batch: kept
    m = _model(nodes, ["n", 1, 1], {"y": ["n", 1], "z": [1, 1, 1]}, [_i("ax1", [1])])
    k, ops = _same(m, ["n", 1, 1])
    assert k == 2 and ops == ["Sigmoid", "Reshape", "ReduceMean"]


def test_incomplete_inference_leaves_no_files(tmp_path, monkeypatch):
    """ORT's symbolic inference saves the model to the working directory when it cannot type a tensor."""
    from edgeslim.onnxkit.static_shapes import symbolic_dims

    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),                       # data-dependent length
             helper.make_node("Custom", ["nz"], ["y"], domain="made.up")]      # an op nobody can type
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("made.up", 1)])
    monkeypatch.chdir(tmp_path)
    symbolic_dims(m)
    assert list(tmp_path.iterdir()) == []
