"""The arena planner against hand-computed arenas on small graphs (sizes in bytes, align=1)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.errors import EdgeslimError
from edgeslim.measure.arena import Buffer, greedy_by_size, peak_live, plan_activation_arena
from edgeslim.measure.onnx_counts import count_onnx


def _w(name: str, shape: tuple[int, ...], dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def chain() -> onnx.ModelProto:
    # X(1,100)=400 B -> MatMul -> A(1,50)=200 -> MatMul -> B(1,200)=800 -> Exp -> C(1,200)=800
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["A"], name="mm1"),
             helper.make_node("MatMul", ["A", "W2"], ["B"], name="mm2"),
             helper.make_node("Exp", ["B"], ["C"], name="exp")]
    return _model(nodes, [_vi("X", ["batch", 100])], [_vi("C", ["batch", 200])],
                  [_w("W1", (100, 50)), _w("W2", (50, 200))])


def branches() -> onnx.ModelProto:
    # two 4000-byte branches from X(1,10); the graph order runs both big tensors together
    nodes = [helper.make_node("MatMul", ["X", "Wa"], ["P"], name="p"),
             helper.make_node("MatMul", ["X", "Wb"], ["Q"], name="q"),
             helper.make_node("MatMul", ["P", "Wc"], ["P2"], name="p2"),
             helper.make_node("MatMul", ["Q", "Wd"], ["Q2"], name="q2"),
             helper.make_node("Add", ["P2", "Q2"], ["O"], name="add")]
    return _model(nodes, [_vi("X", [1, 10])], [_vi("O", [1, 1])],
                  [_w("Wa", (10, 1000)), _w("Wb", (10, 1000)), _w("Wc", (1000, 1)), _w("Wd", (1000, 1))])


def test_chain_hand_computed():
    p = plan_activation_arena(chain(), align=1)
    # lifetimes X[0,0] A[0,1] B[1,2] C[2,2]; live per step 600, 1000, 1600
    life = {b.name: (b.first, b.last, b.size) for b in p.buffers}
    assert life == {"X": (0, 0, 400), "A": (0, 1, 200), "B": (1, 2, 800), "C": (2, 2, 800)}
    assert p.naive_bytes == 2200
    assert p.peak_live_bytes == 1600
    assert p.arena_bytes == 1600
    offs = {b.name: b.offset for b in p.buffers}
    assert offs == {"B": 0, "C": 800, "X": 0, "A": 800}
    assert p.reordered_arena_bytes == 1600  # a chain has one order


def test_branch_order_search_lowers_peak():
    p = plan_activation_arena(branches(), align=1)
    assert p.naive_bytes == 40 + 4000 + 4000 + 4 + 4 + 4
    assert p.peak_live_bytes == 8040  # X + P + Q at step 1
    assert p.arena_bytes == 8040
    assert p.reorder_method == "exact"
    assert p.reordered_order == ["p", "p2", "q", "q2", "add"]
    assert p.reordered_arena_bytes == 4044  # X + P2 + Q while q runs
    assert p.best_arena_bytes == 4044


def test_greedy_fallback_when_state_budget_small():
    p = plan_activation_arena(branches(), align=1, max_states=1)
    assert p.reorder_method == "greedy" and p.reordered_arena_bytes == 4044


def test_alignment_rounds_each_buffer():
    p = plan_activation_arena(chain(), align=16)
    assert all(b.size % 16 == 0 for b in p.buffers)
    assert p.arena_bytes == 1600  # all sizes already multiples of 16
    nodes = [helper.make_node("Exp", ["X"], ["Y"])]
    p = plan_activation_arena(_model(nodes, [_vi("X", [1, 3])], [_vi("Y", [1, 3])], []), align=16)
    assert p.arena_bytes == 32 and p.naive_bytes == 32  # 12 B -> 16 B each


def test_views_and_inplace_share_buffers():
    # X -> Exp -> A(400) -> Reshape -> B -> Relu -> R -> Exp -> C: A, B, R share one buffer
    shape = numpy_helper.from_array(np.array([100, 1], np.int64), "shape")
    nodes = [helper.make_node("Exp", ["X"], ["A"]), helper.make_node("Reshape", ["A", "shape"], ["B"]),
             helper.make_node("Relu", ["B"], ["R"]), helper.make_node("Exp", ["R"], ["C"])]
    m = _model(nodes, [_vi("X", [1, 100])], [_vi("C", [100, 1])], [shape])
    p = plan_activation_arena(m, align=1)
    assert sorted(len(b.members) for b in p.buffers) == [1, 1, 3]
    assert p.naive_bytes == 1200 and p.arena_bytes == 800
    p2 = plan_activation_arena(m, align=1, fuse_inplace=False)
    assert p2.naive_bytes == 1600  # Relu gets its own buffer; Reshape still a view


def qdq() -> onnx.ModelProto:
    # X(1,100) f32 -> Q -> Xq int8 -> DQ -> MatMul(DQ(Wq int8 100x50)) -> Y -> Q -> Yq -> DQ -> Yd
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    wq = numpy_helper.from_array(np.ones((100, 50), np.int8), "Wq")
    nodes = [helper.make_node("QuantizeLinear", ["X", "s", "z"], ["Xq"]),
             helper.make_node("DequantizeLinear", ["Xq", "s", "z"], ["Xd"]),
             helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
             helper.make_node("MatMul", ["Xd", "Wd"], ["Y"], name="mm"),
             helper.make_node("QuantizeLinear", ["Y", "s", "z"], ["Yq"]),
             helper.make_node("DequantizeLinear", ["Yq", "s", "z"], ["Yd"])]
    return _model(nodes, [_vi("X", [1, 100])], [_vi("Yd", [1, 50])], [s, z, wq])


def test_qdq_fused_to_int8_buffers():
    p = plan_activation_arena(qdq(), align=1)
    sizes = sorted(b.size for b in p.buffers)
    assert sizes == [50, 100, 400]  # Y/Yq/Yd as int8 (50), Xq/Xd int8 (100), float input X (400)
    unfused = plan_activation_arena(qdq(), align=1, fuse_qdq=False)
    assert unfused.naive_bytes == 400 + 100 + 400 + 200 + 50 + 200


def test_qdq_counts_int8_macs_and_weight_bytes():
    c = count_onnx(qdq())
    (mm,) = [layer for layer in c.layers if layer.op == "MatMul"]
    assert mm.precision == "int8" and mm.macs == 100 * 50
    assert mm.weight_bytes == 100 * 50  # stored int8
    assert mm.act_in_bytes == 100 and mm.act_out_bytes == 50
    assert count_onnx(chain()).macs_by_precision() == {"fp32": 100 * 50 + 50 * 200}


def test_symbolic_non_batch_dim_needs_shapes():
    nodes = [helper.make_node("Exp", ["X"], ["Y"])]
    m = _model(nodes, [_vi("X", ["batch", "len"])], [_vi("Y", ["batch", "len"])], [])
    with pytest.raises(EdgeslimError, match="--shape X="):
        plan_activation_arena(m)
    assert plan_activation_arena(m, shapes={"X": [1, 7]}, align=1).arena_bytes == 56


def test_greedy_reuses_gaps():
    bufs = [Buffer("a", 100, 0, 1), Buffer("b", 50, 2, 3), Buffer("c", 60, 1, 2)]
    # a@0 (0-100); c overlaps a -> 100; b overlaps c only -> 0
    assert greedy_by_size(bufs) == 160
    assert {b.name: b.offset for b in bufs} == {"a": 0, "c": 100, "b": 0}
    assert peak_live(bufs) == 160


def test_zoo_models_plan(tmp_path):
    import torch  # noqa: F401

    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec

    net = build_model(make_spec("resnet8", (3, 16, 16), 10))
    path = tmp_path / "r.onnx"
    export_onnx(net, (3, 16, 16), path)
    p = plan_activation_arena(path)
    # width 16 at 16x16 fp32 = 16 KiB per feature map; a residual add holds 3 of them
    assert p.arena_bytes == 3 * 16 * 16 * 16 * 4
    assert p.naive_bytes > 2 * p.arena_bytes


def test_unknown_shapes_are_recorded_not_fatal():
    # an If whose branches give different shapes: the output shape cannot be inferred
    then_g = helper.make_graph([helper.make_node("Exp", ["X"], ["t"])], "then", [], [_vi("t", None)])
    else_g = helper.make_graph([helper.make_node("Concat", ["X", "X"], ["e"], axis=1)], "else", [], [_vi("e", None)])
    nodes = [helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "z"], ["c"]),
             helper.make_node("If", ["c"], ["Y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Exp", ["Y"], ["O"])]
    m = _model(nodes, [_vi("X", ["b", 4])], [_vi("O", None)], [_w("z", ())])
    p = plan_activation_arena(m, align=1)
    assert p.unknown_tensors == ["Y", "O"]
    assert p.naive_bytes == 16 + 4 + 1  # X (4 floats), s (float), c (bool); Y and O unknown
    with pytest.raises(EdgeslimError, match="no inferable shape"):
        plan_activation_arena(m, strict=True)


def test_reorder_model_keeps_outputs_and_lowers_arena():
    import onnxruntime as ort

    from edgeslim.measure.arena import reorder_model

    m = branches()
    new, plan = reorder_model(m)
    onnx.checker.check_model(new)
    assert [n.name for n in new.graph.node] == ["p", "p2", "q", "q2", "add"]
    assert plan.arena_bytes < plan_activation_arena(m).arena_bytes
    x = np.random.default_rng(0).random((1, 10), dtype=np.float32)

    def run(model: onnx.ModelProto) -> np.ndarray:
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"X": x})[0]

    np.testing.assert_allclose(run(new), run(m), rtol=1e-6)
