"""Row-wise MatMul + bias as Gemm, identity Gathers as views and unary ops moved off view chains
(`onnxkit.gemm_rows`, rules of `cheap_ops.cheapen_ops`): on tiny generated graphs each pattern is found, the
outputs stay equal within float rounding at batch 1 and 3, the node count drops, and near-misses are left as
they were."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.cheap_ops import DEFAULT_RULES, cheapen_ops
from edgeslim.onnxkit.session import session

RNG = np.random.default_rng(0)


def _t(name: str, v, dt=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, dt), name)


def _model(nodes, x_dims, y_dims, inits=()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)]
    g = helper.make_graph(nodes, "g", ins, outs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _apply(m: onnx.ModelProto, x_dims: list, rules=DEFAULT_RULES) -> tuple[dict[str, int], list[str]]:
    """Rewrite `m` in place; outputs checked against the original at batch 1 and 3; (counts, op types left)."""
    before = m.SerializeToString()
    counts = cheapen_ops(m, rules=rules)
    onnx.checker.check_model(m)
    assert [o.name for o in m.graph.output] == ["y"]
    for batch in (1, 3):
        feed = {"x": RNG.normal(size=[batch if isinstance(d, str) else d for d in x_dims]).astype(np.float32)}
        (a,), (b,) = session(before).run(None, feed), session(m.SerializeToString()).run(None, feed)
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(a))))
    return counts, [n.op_type for n in m.graph.node]


def _conv_rows_chain() -> onnx.ModelProto:
    """Two 1-D convs on channels-last rows as `conv_rows` writes them: [n, 4, 6] -> Pad -> Gather (3 taps) ->
    Reshape -> MatMul + bias -> Relu -> [n, 4, 5] -> Gather of all 4 positions (one output position) ->
    Reshape -> MatMul + bias -> Sigmoid -> Reshape [n, 3]."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Gather", ["p", "taps"], ["f"], axis=1),            # [n, 4, 3, 6]
             helper.make_node("Reshape", ["f", "s1"], ["r"]),                     # [n, 4, 18]
             helper.make_node("MatMul", ["r", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["h"]),                             # [n, 4, 5]
             helper.make_node("Gather", ["h", "all4"], ["g"], axis=1),            # [n, 1, 4, 5]
             helper.make_node("Reshape", ["g", "s2"], ["r2"]),                    # [n, 1, 20]
             helper.make_node("MatMul", ["r2", "w2"], ["m2"]),
             helper.make_node("Add", ["b2", "m2"], ["a2"]),                       # bias on the left, [1, 1, 3]
             helper.make_node("Sigmoid", ["a2"], ["sg"]),
             helper.make_node("Reshape", ["sg", "s3"], ["y"])]
    taps = [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    inits = [_t("pads", [0, 1, 0, 0, 1, 0], np.int64), _t("taps", taps, np.int64),
             _t("s1", [0, 4, 18], np.int64), _t("w1", RNG.normal(size=(18, 5))), _t("b1", RNG.normal(size=5)),
             _t("all4", [[0, 1, 2, 3]], np.int64), _t("s2", [0, 1, 20], np.int64), _t("w2", RNG.normal(size=(20, 3))),
             _t("b2", RNG.normal(size=(1, 1, 3))), _t("s3", [-1, 3], np.int64)]
    return _model(nodes, ["n", 4, 6], ["n", 3], inits)


def test_conv_rows_chain_becomes_gemms():
    m = _conv_rows_chain()
    counts, ops = _apply(m, ["n", 4, 6])
    assert counts["matmul_gemm"] == 2 and counts["gather_view"] == 1 and counts["unary_views"] == 2
    assert ops.count("Gemm") == 2 and "MatMul" not in ops and "Add" not in ops
    # Pad, Gather, Reshape, Gemm, Relu, Reshape (the second layer's rows: [n, 20]), Gemm, Sigmoid: 12 -> 8 nodes;
    # the Sigmoid writes the output (its Reshape to [n, 3] is a no-op and went)
    assert ops == ["Pad", "Gather", "Reshape", "Gemm", "Relu", "Reshape", "Gemm", "Sigmoid"]
    assert m.graph.node[-1].output[0] == "y"


def test_lstm_head_like_tail_collapses():
    """The silero VAD's head: [1, n, 16] -> Reshape [n, 16, 1] -> Relu -> Transpose -> MatMul [16, 1] + bias ->
    Transpose -> Sigmoid -> Reshape [n, 1]: becomes Relu, Reshape, Gemm, Sigmoid."""
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Relu", ["r"], ["a"]),
             helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["c"]),
             helper.make_node("Transpose", ["c"], ["t2"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["t2"], ["s"]),
             helper.make_node("Reshape", ["s", "s2"], ["y"])]
    inits = [_t("s1", [-1, 16, 1], np.int64), _t("w", RNG.normal(size=(16, 1))), _t("b", [0.3]),
             _t("s2", [-1, 1], np.int64)]
    counts, ops = _apply(_model(nodes, [1, "n", 16], ["n", 1], inits), [1, "n", 16])
    assert counts["matmul_gemm"] == 1 and counts["unary_views"] == 2
    assert ops == ["Relu", "Reshape", "Gemm", "Sigmoid"]


def test_near_misses_untouched():
    """A MatMul by a non-constant, a bias of a full [4, 5] shape, a MatMul read twice, a Gather out of order,
    a Relu whose view is read twice: nothing rewritten, the graph byte for byte as it was."""
    nodes = [helper.make_node("MatMul", ["x", "xt"], ["mm"]),                    # [n, 4, 4]: not a constant
             helper.make_node("Add", ["mm", "full"], ["a"]),
             helper.make_node("MatMul", ["a", "w"], ["m2"]),                     # [n, 4, 5]
             helper.make_node("Add", ["m2", "full5"], ["a2"]),                    # bias [4, 5]: not per channel
             helper.make_node("MatMul", ["a2", "w5"], ["m3"]),
             helper.make_node("Add", ["m3", "b5"], ["a3"]),
             helper.make_node("Relu", ["m3"], ["r3"]),                           # m3 read twice
             helper.make_node("Add", ["a3", "r3"], ["s"]),
             helper.make_node("Gather", ["s", "rev"], ["g"], axis=1),           # positions reversed
             helper.make_node("Reshape", ["g", "flat"], ["v"]),
             helper.make_node("Sigmoid", ["v"], ["sg"]),
             helper.make_node("Add", ["sg", "v"], ["y"])]                        # v read by Sigmoid and Add
    inits = [_t("full", RNG.normal(size=(4, 4))), _t("w", RNG.normal(size=(4, 5))),
             _t("full5", RNG.normal(size=(4, 5))),
             _t("w5", RNG.normal(size=(5, 5))), _t("b5", RNG.normal(size=5)), _t("rev", [3, 2, 1, 0], np.int64),
             _t("flat", [0, 20], np.int64)]
    m = _model([helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), *nodes], ["n", 4, 4], ["n", 20], inits)
    before = m.SerializeToString()
    counts, _ = _apply(m, ["n", 4, 4], rules=("matmul_gemm", "gather_view", "unary_views"))
    assert counts == {"matmul_gemm": 0, "gather_view": 0, "unary_views": 0}
    assert m.SerializeToString() == before


def _lstm(read_y: bool) -> onnx.ModelProto:
    """x [1, n, 4] -> LSTM (hidden 3) -> Y_h (+ Y when `read_y`) -> y."""
    w, r = RNG.normal(size=(1, 12, 4)) * 0.5, RNG.normal(size=(1, 12, 3)) * 0.5
    nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["seq", "h", "c"], hidden_size=3)]
    if read_y:
        nodes.append(helper.make_node("Reshape", ["seq", "s"], ["seq2"]))
        nodes.append(helper.make_node("Add", ["h", "seq2"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["y"]))
    return _model(nodes, [1, "n", 4], [1, "n", 3], [_t("w", w), _t("r", r), _t("s", [1, -1, 3], np.int64)])


def test_rnn_outputs_nobody_reads_dropped():
    m = _lstm(read_y=False)
    counts, _ = _apply(m, [1, "n", 4], rules=("rnn_outputs",))
    assert counts == {"rnn_outputs": 2} and list(m.graph.node[0].output) == ["", "h"]  # Y and Y_c; Y_h kept
    m = _lstm(read_y=True)
    counts, _ = _apply(m, [1, "n", 4], rules=("rnn_outputs",))
    assert counts == {"rnn_outputs": 1} and list(m.graph.node[0].output) == ["seq", "h"]  # only Y_c
    assert "rnn_outputs" not in DEFAULT_RULES
