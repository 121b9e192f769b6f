"""Graph rewrites on a model whose main-graph tensors are read only inside `If` branches (issue 23: PP-OCRv4 rec
re-exported from PyTorch reads Slice outputs only inside `If` bodies, and the INT8 stage wrote a file whose
`If` read a name nothing produced). Every rewrite must count a body's read as a use and rename inside bodies:
each one here leaves a model ONNX Runtime loads and that computes what the original does, on both branches."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgeslim.onnxkit.bnfold import fold_into_convs
from edgeslim.onnxkit.graph import consumers, rename_reads, save, used_names
from edgeslim.onnxkit.patterns import fuse_hardswish
from edgeslim.onnxkit.quant import compact_onnx
from edgeslim.onnxkit.session import session
from edgeslim.quant import int8_plan
from edgeslim.quant.qdq_shrink import share_scalars

N, C = 4, 8


def _model() -> onnx.ModelProto:
    """x -> Conv -> c1 -> Mul(per-channel) -> hard-swish (Add 3, Clip 0..6, Mul, Div 6) -> Conv -> y.
    An `If` on sum(x) > 0 reads c1 (then: Sigmoid) or the Clip's output (else: Neg) from the main graph:
    c1's only main-graph reader is the Mul (foldable into the conv), the Clip's only one the hard-swish Mul."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(0, 0.3, (C, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(np.zeros(C, np.float32), "b1"),
             nh.from_array(rng.uniform(0.5, 1.5, (1, C, 1, 1)).astype(np.float32), "s"),
             nh.from_array(np.array(3, np.float32), "three"), nh.from_array(np.array(0, np.float32), "zero"),
             nh.from_array(np.array(6, np.float32), "six"), nh.from_array(np.array(6, np.float32), "six_b"),
             nh.from_array(rng.normal(0, 0.3, (C, C, 1, 1)).astype(np.float32), "w2")]
    then = h.make_graph([h.make_node("Sigmoid", ["c1"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", T.FLOAT, ["n", C, 8, 8])])
    other = h.make_graph([h.make_node("Neg", ["clip"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, ["n", C, 8, 8])])
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Mul", ["c1", "s"], ["m1"], name="scale"),
        h.make_node("Add", ["m1", "three"], ["a3"], name="add3"),
        h.make_node("Clip", ["a3", "zero", "six"], ["clip"], name="clip"),
        h.make_node("Mul", ["m1", "clip"], ["mc"], name="mul"),
        h.make_node("Div", ["mc", "six_b"], ["hs"], name="div6"),
        h.make_node("Conv", ["hs", "w2"], ["y"], name="conv2"),
        h.make_node("ReduceSum", ["x"], ["sum"], name="sum", keepdims=0),
        h.make_node("Greater", ["sum", "zero"], ["cond"], name="positive"),
        h.make_node("If", ["cond"], ["branch"], name="if", then_branch=then, else_branch=other),
    ]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", C, 8, 8]),
                      h.make_tensor_value_info("branch", T.FLOAT, ["n", C, 8, 8])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    return m


def _x(sign: float, seed: int = 1) -> np.ndarray:
    """Inputs whose sum has the given sign (the `If` takes then for > 0, else otherwise)."""
    x = np.random.default_rng(seed).normal(0, 1, (N, 3, 8, 8)).astype(np.float32)
    return (np.abs(x) * sign + 0.1 * x).astype(np.float32)


def _run(m: onnx.ModelProto | bytes, x: np.ndarray) -> list[np.ndarray]:
    return session(m if isinstance(m, bytes) else m.SerializeToString()).run(None, {"x": x})


def _dangling(g: onnx.GraphProto, scope: frozenset[str] = frozenset()) -> list[str]:
    """Names read (by nodes of `g` or of its bodies, or returned as outputs) that nothing in scope produces."""
    have = scope | {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    bad = [i for n in g.node for i in n.input if i and i not in have]
    for n in g.node:
        for a in n.attribute:
            for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                bad += _dangling(sg, frozenset(have))
    return bad + [o.name for o in g.output if o.name not in have]


def _same_on_both_branches(before: onnx.ModelProto, after: onnx.ModelProto | bytes, atol: float = 1e-5) -> None:
    for sign in (1.0, -1.0):
        x = _x(sign)
        want, got = _run(before, x), _run(after, x)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w, atol=atol, rtol=1e-4)


def test_a_tensor_read_only_inside_an_if_branch_counts_as_used_and_is_renamed_there() -> None:
    g = _model().graph
    cons = consumers(g)
    assert [n.name for n in cons["c1"]] == ["scale", "if"] and [n.name for n in cons["clip"]] == ["mul", "if"]
    assert {"c1", "clip"} <= used_names(g) and "t" not in cons  # the body's own tensors are not the scope's
    rename_reads(g, {"c1": "c1_new", "t": "t_new"})
    then = next(a.g for n in g.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert list(then.node[0].input) == ["c1_new"] and then.output[0].name == "t"  # local `t` shadows: untouched
    assert list(g.node[1].input) == ["c1_new", "s"]


def test_folding_and_hardswish_fusion_leave_a_tensor_an_if_reads() -> None:
    m = _model()
    fm = onnx.ModelProto()
    fm.CopyFrom(m)
    fold_into_convs(fm)
    assert fuse_hardswish(fm) == 0  # the Clip's output is read inside the else branch: not fused away
    fold_into_convs(fm)
    assert not _dangling(fm.graph)
    assert any(n.name == "scale" for n in fm.graph.node)  # c1 is read inside then: the Mul is not folded into it
    _same_on_both_branches(m, fm)


def test_compact_and_shared_scalars_rename_inside_if_bodies(tmp_path) -> None:
    m = _model()
    s = onnx.ModelProto()
    s.CopyFrom(m)
    # `six` and `six_b` are merged (the Clip's max follows); `zero` is read inside no body but c1 is
    assert share_scalars(s) == 1 and not _dangling(s.graph)
    save(s, tmp_path / "raw.onnx")
    compact_onnx(tmp_path / "raw.onnx", tmp_path / "small.onnx")
    small = onnx.load(str(tmp_path / "small.onnx"))
    assert not _dangling(small.graph)
    assert all(len(i) <= 2 for n in small.graph.node for i in n.input if i != "x")  # renamed everywhere
    _same_on_both_branches(m, small)


class _Clock:
    """No timing is asked for with one format and no speed choice."""

    def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
        raise AssertionError("nothing to time")

    def ratio(self, cand, ref):  # noqa: ANN001, ANN201 - the Clock protocol
        raise AssertionError("nothing to time")

    def profile(self, models: dict[str, bytes], runs: int = 15) -> dict[str, dict[str, float]]:
        raise AssertionError("nothing to profile")


def test_int8_plan_and_compact_keep_if_bodies_loadable_and_faithful(tmp_path) -> None:
    m = _model()
    feeds = [{"x": _x(s, seed)} for s in (1.0, -1.0) for seed in (2, 3)]
    ref = [_run(m, f["x"]) for f in feeds]
    opts = int8_plan.Int8Options(formats=("u8s8-pc",), cle=False, adaround=False, bias_correction=False,
                                 calib="minmax", speed_choice=False, fidelity_fallback=False)
    plan = int8_plan.build_plan(m, feeds, ref, opts, _Clock())
    assert any(n.op_type == "QuantizeLinear" for n in plan.model.graph.node)
    save(plan.model, tmp_path / "raw.onnx")
    compact_onnx(tmp_path / "raw.onnx", tmp_path / "int8.onnx")  # what quantize_int8 writes
    q = onnx.load(str(tmp_path / "int8.onnx"))
    assert not _dangling(q.graph)
    for sign in (1.0, -1.0):
        x = _x(sign)
        for w, g in zip(_run(m, x), _run(q, x), strict=True):
            cos = float(np.dot(w.ravel(), g.ravel()) / (np.linalg.norm(w) * np.linalg.norm(g)))
            assert cos > 0.99, (sign, cos)


def test_a_read_two_bodies_deep_counts_and_compact_renames_it(tmp_path) -> None:
    """An `If` inside an `If` branch reads a main-graph tensor: the outer `If` is its reader, and compact_onnx
    renames it at depth 2 (the model still loads and computes the same on both branches)."""
    inner_then = h.make_graph([h.make_node("Abs", ["r"], ["ia"])], "ithen", [],
                              [h.make_tensor_value_info("ia", T.FLOAT, [2])])
    inner_else = h.make_graph([h.make_node("Neg", ["r"], ["ib"])], "ielse", [],
                              [h.make_tensor_value_info("ib", T.FLOAT, [2])])
    then = h.make_graph([h.make_node("If", ["c"], ["t"], then_branch=inner_then, else_branch=inner_else)], "then", [],
                        [h.make_tensor_value_info("t", T.FLOAT, [2])])
    other = h.make_graph([h.make_node("Identity", ["r"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, [2])])
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2])],
                     [h.make_tensor_value_info("out", T.FLOAT, [2])], [nh.from_array(np.array(0, np.float32), "zero")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    assert [n.op_type for n in consumers(m.graph)["r"]] == ["If"]
    save(m, tmp_path / "raw.onnx")
    compact_onnx(tmp_path / "raw.onnx", tmp_path / "small.onnx")
    small = onnx.load(str(tmp_path / "small.onnx"))
    assert not _dangling(small.graph)
    for x in (np.array([2.0, -1.0], np.float32), np.array([-2.0, 1.0], np.float32)):
        want = session(m.SerializeToString()).run(None, {"x": x})[0]
        assert np.array_equal(session(small.SerializeToString()).run(None, {"x": x})[0], want)
