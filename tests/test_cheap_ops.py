"""Single ops made cheaper (`onnxkit.cheap_ops`): each rule finds its pattern in a small graph, the graph keeps
its output names and gives the same outputs in ONNX Runtime (within 1e-5) at batch 1 and 3; graphs that do not
match are left byte for byte as they were."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgeslim.onnxkit.cheap_ops import RULES, cheapen_ops
from edgeslim.onnxkit.session import session


def _t(name: str, v, dt=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, dt), name)


def _model(nodes, x_dims, outputs: dict[str, list], inits=()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()]
    g = helper.make_graph(nodes, "g", ins, outs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _apply(m: onnx.ModelProto, x_dims: list, **kw) -> tuple[dict[str, int], list[str]]:
    """Rewrite `m` in place, check outputs against the original at batch 1 and 3; (counts, op types left)."""
    before = m.SerializeToString()
    names = [o.name for o in m.graph.output]
    counts = cheapen_ops(m, **kw)
    onnx.checker.check_model(m)
    assert [o.name for o in m.graph.output] == names
    for batch in (1, 3):
        shape = [batch if isinstance(d, str) else d for d in x_dims]
        feed = {"x": np.random.default_rng(batch).normal(size=shape).astype(np.float32)}
        a, b = session(before).run(None, feed), session(m.SerializeToString()).run(None, feed)
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert u.shape == v.shape and np.max(np.abs(u - v)) <= 1e-5 * max(1.0, float(np.max(np.abs(u))))
    return counts, [n.op_type for n in m.graph.node]


def test_add_zero_and_mul_one_removed_output_keeps_its_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Add", ["zero", "r"], ["a"]),            # 0 + r
             helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Div", ["s", "one"], ["y"])]             # graph output: Sigmoid writes 'y'
    m = _model(nodes, ["n", 4], {"y": ["n", 4]}, [_t("zero", 0.0), _t("one", [1.0])])
    counts, ops = _apply(m, ["n", 4])
    assert counts["identity_arith"] == 2 and ops == ["Relu", "Sigmoid"]
    assert m.graph.node[1].input[0] == "r" and m.graph.node[1].output[0] == "y"


def test_arith_that_changes_values_or_shapes_untouched():
    nodes = [helper.make_node("Add", ["x", "half"], ["a"]),           # not zero
             helper.make_node("Sub", ["zero", "a"], ["b"]),           # 0 - a: a negation
             helper.make_node("Mul", ["b", "one3"], ["y"])]           # one of rank 3 > rank 2: broadcasts
    m = _model(nodes, ["n", 4], {"y": [1, "n", 4]}, [_t("half", 0.5), _t("zero", 0.0), _t("one3", [[[1.0]]])])
    before = m.SerializeToString()
    counts, _ = _apply(m, ["n", 4])
    assert sum(counts.values()) == 0 and m.SerializeToString() == before


def test_pow_two_becomes_mul_pow_three_kept():
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("Pow", ["p", "three"], ["y"])]
    m = _model(nodes, ["n", 5], {"y": ["n", 5]}, [_t("two", 2.0), _t("three", 3.0)])
    assert sum(cheapen_ops(m).values()) == 0  # not a default rule
    counts, ops = _apply(m, ["n", 5], rules=RULES)
    assert counts["pow_square"] == 1 and ops == ["Mul", "Pow"]
    assert list(m.graph.node[0].input) == ["x", "x"]


def test_pow_two_of_a_layernorm_variance_kept():
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["y"], axes=[-1])]
    m = _model(nodes, ["n", 5], {"y": ["n", 1]}, [_t("two", 2.0)])
    counts, ops = _apply(m, ["n", 5], rules=RULES)
    assert counts["pow_square"] == 0 and ops == ["Pow", "ReduceMean"]


def _stft_like(pad_first: bool, mode: str = "reflect", bias: bool = True, cin: int = 1, length: int = 40,
               stride: int = 8, k: int = 16, end: int = 8) -> onnx.ModelProto:
    """x [n, length] -> reflect Pad (`end` at the end) -> Unsqueeze (or the other order) -> Conv1d(1 -> 6, k)."""
    rng = np.random.default_rng(0)
    inits = [_t("w", rng.normal(size=(6, cin, k))), _t("ax1", [1], np.int64)]
    conv_in = ["c_in", "w"]
    if bias:
        inits.append(_t("b", rng.normal(size=6)))
        conv_in.append("b")
    if pad_first:
        inits.append(_t("pads", [0, 0, 0, end], np.int64))
        nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode=mode),
                 helper.make_node("Unsqueeze", ["p", "ax1"], ["c_in"])]
    else:
        inits.append(_t("pads", [0, 0, 0, 0, 0, end], np.int64))
        nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["u"]),
                 helper.make_node("Pad", ["u", "pads"], ["c_in"], mode=mode)]
    nodes.append(helper.make_node("Conv", conv_in, ["c"], kernel_shape=[k], strides=[stride]))
    nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    out_len = (length + end - k) // stride + 1
    return _model(nodes, ["n", length], {"y": ["n", 6, out_len]}, inits)


def test_stft_like_conv_becomes_gather_matmul():
    for pad_first, mode, bias in [(True, "reflect", True), (False, "edge", False), (False, "reflect", True)]:
        m = _stft_like(pad_first, mode, bias)
        counts, ops = _apply(m, ["n", 40])  # (48 - 16) / 8 + 1 = 5 output positions
        assert counts["conv_as_matmul"] == 1, (pad_first, mode)
        assert ops == ["Gather", "MatMul", *(["Add"] if bias else []), "Transpose", "Relu"], ops


def test_stft_hops_gathered_whole():
    # k 64 = 2 hops of 32: Pad cut to what the frames read -> Reshape into hops -> Gather -> Reshape -> MatMul
    for pad_first, mode, end in [(True, "reflect", 40), (False, "edge", 40), (True, "reflect", 32)]:
        m = _stft_like(pad_first, mode, length=160, stride=32, k=64, end=end)  # (160 + 32 - 64) / 32 + 1 = 5
        counts, ops = _apply(m, ["n", 160])
        assert counts["conv_as_matmul"] == 1
        assert ops == ["Pad", "Reshape", "Gather", "Reshape", "MatMul", "Add", "Transpose", "Relu"], ops
        pads = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith("_pads"))
        assert pads.tolist() == [0, 0, 0, 32]  # 40 cut to the 32 the frames read
    m = _stft_like(True, length=160, stride=32, k=64, end=0)  # no padding to do: no Pad
    counts, ops = _apply(m, ["n", 160])
    assert ops == ["Reshape", "Gather", "Reshape", "MatMul", "Add", "Transpose", "Relu"], ops


def test_constant_pad_read_as_is():
    m = _stft_like(True, mode="constant")  # zero padding: the Gather reads the Pad's output, the Pad stays
    counts, ops = _apply(m, ["n", 40])
    assert counts["conv_as_matmul"] == 1 and ops == ["Pad", "Gather", "MatMul", "Add", "Transpose", "Relu"]


def test_conv_not_matching_untouched():
    many = _stft_like(True, length=200)  # 25 output positions: ORT's conv kept
    rng = np.random.default_rng(0)
    two = _model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[16], strides=[8])],  # 2 channels in
                 ["n", 2, 40], {"y": ["n", 6, 4]}, [_t("w", rng.normal(size=(6, 2, 16)))])
    for m, dims in ((many, ["n", 200]), (two, ["n", 2, 40])):  # (`two` is conv_rows' kind: not asked for here)
        before = m.SerializeToString()
        counts, _ = _apply(m, dims, rules=("identity_arith", "conv_as_matmul"))
        assert counts["conv_as_matmul"] == 0 and m.SerializeToString() == before


def test_export_converted_records_rewrites(tmp_path):
    from edgeslim.onnxtorch import export_converted

    class Front(nn.Module):  # an STFT magnitude written as a conv, as silero VAD does
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 10, 16, stride=8, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = self.conv(nn.functional.pad(x.unsqueeze(1), (0, 8), mode="reflect"))
            return torch.sqrt(c[:, :5] ** 2 + c[:, 5:] ** 2)

    torch.manual_seed(0)
    mod = Front()
    feeds = {"input_0": np.random.default_rng(0).normal(size=(1, 40)).astype(np.float32)}
    res = export_converted(mod, feeds, tmp_path / "m.onnx", align=0)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert res["ops_rewritten"] == 1 and "Conv" not in ops and ops[:2] == ["Gather", "MatMul"]
    assert max(res["parity_max_abs_diff"].values()) < 1e-4


def _conv(name: str, x: str, w: np.ndarray, b: np.ndarray | None, **kw) -> tuple[onnx.NodeProto, list]:
    inits = [_t(f"{name}_w", w)] + ([_t(f"{name}_b", b)] if b is not None else [])
    ins = [x, f"{name}_w"] + ([f"{name}_b"] if b is not None else [])
    return helper.make_node("Conv", ins, [name], kernel_shape=[w.shape[2]], **kw), inits


def test_conv_chain_as_rows_matmul_transposes_cancelled():
    # x [n, 9, 4] -> conv 3 taps pad 1 -> Relu -> conv stride 2 -> Relu -> conv stride 2 (1 position: its first
    # tap reads only padding, dropped) -> Relu -> 1x1 conv -> Sigmoid: each conv one MatMul on channels-last rows;
    # Transposes only at the ends
    rng = np.random.default_rng(1)
    c1, i1 = _conv("c1", "x", rng.normal(size=(8, 9, 3)), rng.normal(size=8), pads=[1, 1])
    c2, i2 = _conv("c2", "r1", rng.normal(size=(6, 8, 3)), rng.normal(size=6), pads=[1, 1], strides=[2])
    c3, i3 = _conv("c3", "r2", rng.normal(size=(6, 6, 3)), None, pads=[1, 1], strides=[2])
    c4, i4 = _conv("c4", "r3", rng.normal(size=(2, 6, 1)), rng.normal(size=2))
    nodes = [c1, helper.make_node("Relu", ["c1"], ["r1"]), c2, helper.make_node("Relu", ["c2"], ["r2"]),
             c3, helper.make_node("Relu", ["c3"], ["r3"]), c4, helper.make_node("Sigmoid", ["c4"], ["y"])]
    m = _model(nodes, ["n", 9, 4], {"y": ["n", 2, 1]}, i1 + i2 + i3 + i4)
    counts, ops = _apply(m, ["n", 9, 4])
    assert counts["conv_rows"] == 4 and "Conv" not in ops
    # each conv one MatMul (a Gemm where `gemm_rows.matmul_gemm` took it with its bias); Transposes in at the start,
    # out at the end
    assert ops.count("MatMul") + ops.count("Gemm") == 4 and ops.count("Transpose") == 2, ops
    # c3: no Pad (2 real taps; its Gather of all positions in order a view, `gemm_rows.gather_view`); c4 (1x1): the
    # rows as they are
    assert ops.count("Pad") == 2 and ops.count("Gather") + counts["gather_view"] == 3


def test_conv_rows_not_for_many_positions_or_groups():
    rng = np.random.default_rng(2)
    long, i1 = _conv("y", "x", rng.normal(size=(4, 4, 3)), None, pads=[1, 1])  # 16 positions
    grouped, i2 = _conv("y", "x", rng.normal(size=(4, 2, 3)), None, pads=[1, 1], group=2)
    for node, inits, dims, out in ((long, i1, ["n", 4, 16], ["n", 4, 16]), (grouped, i2, ["n", 4, 4], ["n", 4, 4])):
        m = _model([node], dims, {"y": out}, inits)
        before = m.SerializeToString()
        counts, _ = _apply(m, dims)
        assert sum(counts.values()) == 0 and m.SerializeToString() == before
