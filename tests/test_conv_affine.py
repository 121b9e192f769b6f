"""Constant affine ops beside convs folded in the re-export (`onnxkit.conv_affine`, rules `conv_affine` and
`affine_swap` of `cheap_ops.cheapen_ops`): a PP-LCNetV3-style block loses its Mul/Add pairs but the one Add in
front of a padded conv, outputs equal within 1e-5 in ONNX Runtime at batch 1 and 3; graphs that do not match
are left byte for byte as they were."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit.cheap_ops import DEFAULT_RULES, cheapen_ops

BOTH = ("conv_affine", "affine_swap")
from edgeslim.onnxkit.session import session


def _t(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _model(nodes, inits, c: int = 4, co: int = 4) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 6, 6])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", co, 6, 6])]
    return helper.make_model(helper.make_graph(nodes, "g", ins, outs, inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _check(m: onnx.ModelProto, rules=BOTH, c: int = 4) -> tuple[dict[str, int], list[str]]:
    """Rewrite `m` in place; outputs equal the original's at batch 1 and 3. Returns (counts, op types left)."""
    before = m.SerializeToString()
    counts = cheapen_ops(m, rules=rules)
    onnx.checker.check_model(m)
    assert [o.name for o in m.graph.output] == ["y"]
    for batch in (1, 3):
        feed = {"x": np.random.default_rng(batch).normal(size=(batch, c, 6, 6)).astype(np.float32)}
        a, b = session(before).run(None, feed)[0], session(m.SerializeToString()).run(None, feed)[0]
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(a))))
    return counts, [n.op_type for n in m.graph.node]


def _lab_block(s_dw, t_dw) -> onnx.ModelProto:
    """Conv 3x3 -> Mul(s, .) -> Add(t) -> HardSwish -> Mul -> Add -> depthwise Conv 3x3 (padded) -> Mul -> Add ->
    HardSwish -> Mul -> Add -> Conv 1x1: PP-OCRv4 rec's learnable affine blocks, constants first as exported."""
    rng = np.random.default_rng(0)
    inits = [_t("w1", rng.normal(size=(8, 4, 3, 3)) * 0.3), _t("b1", rng.normal(size=8)),
             _t("wd", rng.normal(size=(8, 1, 3, 3)) * 0.3), _t("bd", rng.normal(size=8)),
             _t("w2", rng.normal(size=(5, 8, 1, 1)) * 0.3),
             _t("s1", [1.3]), _t("t1", [-0.2]), _t("s2", s_dw), _t("t2", t_dw), _t("s3", [0.7]), _t("t3", [0.4]),
             _t("s4", [1.1]), _t("t4", [0.05])]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["s1", "c1"], ["m1"]), helper.make_node("Add", ["m1", "t1"], ["a1"]),
             helper.make_node("HardSwish", ["a1"], ["h1"]),
             helper.make_node("Mul", ["s2", "h1"], ["m2"]), helper.make_node("Add", ["m2", "t2"], ["a2"]),
             helper.make_node("Conv", ["a2", "wd", "bd"], ["c2"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Mul", ["s3", "c2"], ["m3"]), helper.make_node("Add", ["m3", "t3"], ["a3"]),
             helper.make_node("HardSwish", ["a3"], ["h3"]),
             helper.make_node("Mul", ["s4", "h3"], ["m4"]), helper.make_node("Add", ["m4", "t4"], ["a4"]),
             helper.make_node("Conv", ["a4", "w2"], ["y"])]
    return _model(nodes, inits, co=5)


def test_affine_block_folds_all_but_the_add_before_the_padded_conv():
    m = _lab_block([0.8], [0.3])
    counts, ops = _check(m)
    # after convs: Mul+Add twice (4); before the 1x1 conv: Mul+Add (2); before the padded depthwise conv: the
    # Mul, once swapped behind its Add (1 swap + 1 fold)
    assert counts["conv_affine"] == 7 and counts["affine_swap"] == 1
    assert ops == ["Conv", "HardSwish", "Add", "Conv", "HardSwish", "Conv"]
    add = m.graph.node[2]  # Add(h1, t / s) in front of the depthwise conv, whose weight took s
    t_over_s = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == add.input[1]))
    assert np.allclose(t_over_s, 0.3 / 0.8)


def test_per_channel_constants_swapped_per_channel():
    s = np.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1)
    t = np.linspace(-1.0, 1.0, 8).reshape(8, 1, 1)  # [C, 1, 1]: broadcasts on axis 1 too
    m = _lab_block(s, t)
    counts, ops = _check(m)
    assert counts["affine_swap"] == 1 and ops.count("Add") == 1 and "Mul" not in ops
    add = m.graph.node[2]
    v = numpy_helper.to_array(next(x for x in m.graph.initializer if x.name == add.input[1]))
    assert v.shape == (1, 8, 1, 1) and np.allclose(v.reshape(-1), t.reshape(-1) / s.reshape(-1))


def test_swap_alone_folds_the_moved_mul_only_where_it_swapped():
    m = _lab_block([0.8], [0.3])
    counts, ops = _check(m, rules=("affine_swap",))
    assert counts["affine_swap"] == 8 and "Mul" not in ops  # 1 swap, and every fold made then counted here


def _pair_before_padded_conv(s, extra_reader: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [_t("w", rng.normal(size=(4, 1, 3, 3))), _t("s", s), _t("t", [0.5])]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Mul", ["r", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1], group=4)]
    if extra_reader:  # the Mul's output is read twice: moving it would change the other reader's input
        nodes.append(helper.make_node("Add", ["c", "m"], ["y"]))
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    return _model(nodes, inits)


def test_pairs_that_cannot_swap_are_left_byte_for_byte():
    for m in (_pair_before_padded_conv([0.0], False),   # s = 0: t / s undefined
              _pair_before_padded_conv([2.0], True),    # Mul output read twice
              _pair_before_padded_conv([1, 2, 3, 4, 5, 6], False)):  # per column, not per channel
        before = m.SerializeToString()
        counts, _ = _check(m, rules=("affine_swap",))
        assert counts["affine_swap"] == 0 and m.SerializeToString() == before


def test_pair_that_swaps_in_the_small_graph():
    m = _pair_before_padded_conv([2.0], False)
    counts, ops = _check(m, rules=("affine_swap",))
    assert counts["affine_swap"] == 2 and ops == ["Relu", "Add", "Conv", "Relu"]


def test_default_rules_fold_but_do_not_swap():
    m = _lab_block([0.8], [0.3])
    counts, ops = _check(m, rules=DEFAULT_RULES)
    assert "affine_swap" not in counts and counts["conv_affine"] == 6
    assert ops == ["Conv", "HardSwish", "Mul", "Add", "Conv", "HardSwish", "Conv"]
