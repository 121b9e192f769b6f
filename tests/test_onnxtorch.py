"""ONNX -> trainable torch -> pruned (Torch-Pruning's dependency graph) -> ONNX, on small generated graphs.

Each case checks parity with ONNX Runtime before pruning (< 1e-4), that the pruned module runs with fewer
channels, and that the re-exported file runs in ONNX Runtime with the pruned shapes and matches the pruned module."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.session import session
from edgeslim.onnxtorch import conversion_parity, export_converted, onnx_to_torch

RNG = np.random.default_rng(0)


def w(name: str, *shape: int, lo: float | None = None) -> onnx.TensorProto:
    a = RNG.uniform(lo, 1.5, shape) if lo is not None else RNG.normal(0, 0.5, shape)
    return nh.from_array(a.astype(np.float32), name)


def i64(name: str, v: list[int] | int) -> onnx.TensorProto:
    return nh.from_array(np.array(v, np.int64), name)


def model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def vi(name: str, shape: list, t: int = T.FLOAT) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, t, shape)


def conv_bn_res() -> onnx.ModelProto:
    """conv(+Paddle-style Reshape/Add bias, weight from a Constant node) -> BN -> relu -> conv (asymmetric pads)
    + 1x1 shortcut -> global pool -> Reshape [-1, C] -> Gemm; one initializer also listed as a graph input."""
    wc = w("wc1", 8, 3, 3, 3)
    nodes = [
        h.make_node("Constant", [], ["w1"], value=wc, name="w1_const"),
        h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Reshape", ["b1", "b1_shape"], ["b1r"], name="bias_reshape"),
        h.make_node("Add", ["c1", "b1r"], ["c1b"], name="bias_add"),
        h.make_node("BatchNormalization", ["c1b", "s", "bb", "m", "v"], ["n1"], name="bn1"),
        h.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2"], ["c2"], pads=[0, 0, 1, 0], name="conv2"),
        h.make_node("Conv", ["x", "w3"], ["c3"], name="shortcut"),
        h.make_node("Add", ["c2", "c3"], ["a"], name="residual"),
        h.make_node("GlobalAveragePool", ["a"], ["g"], name="pool"),
        h.make_node("Reshape", ["g", "flat_shape"], ["f"], name="flatten"),
        h.make_node("Gemm", ["f", "wl", "bl"], ["y"], transB=1, name="fc"),
    ]
    inits = [w("b1", 8), i64("b1_shape", [1, 8, 1, 1]), w("s", 8, lo=0.5), w("bb", 8), w("m", 8), w("v", 8, lo=0.5),
             w("w2", 8, 8, 2, 1), w("w3", 8, 3, 1, 1), i64("flat_shape", [-1, 8]), w("wl", 5, 8), w("bl", 5)]
    return model(nodes, [vi("x", ["N", 3, 8, 8]), vi("wl", [5, 8])], [vi("y", ["N", 5])], inits)


def prune_export_check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], conv_key: str, tmp_path,
                       ratio: float = 0.5) -> None:
    """The whole round trip on `m`: parity, prune `ratio` of `conv_key`'s output channels, run, export, ORT."""
    module, _ = onnx_to_torch(m, input_shapes={k: v.shape for k, v in feeds.items()})
    errs = conversion_parity(m, module, feeds)
    assert set(errs) == {o.name for o in m.graph.output}
    assert max(errs.values()) < 1e-4, errs
    args = tuple(torch.from_numpy(feeds[n]) for n in module.input_names)
    shapes = [tuple(o.shape) for o in module(*args)]
    conv = module.graph.nodes[conv_key].conv
    before = conv.out_channels
    dg = tp.DependencyGraph().build_dependency(module, example_inputs=args)
    k = int(before * ratio)
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(k)))
    group.prune()
    assert conv.out_channels == before - k
    outs = module(*args)
    assert [tuple(o.shape) for o in outs] == shapes
    res = export_converted(module, feeds, tmp_path / "pruned.onnx")
    assert max(res["parity_max_abs_diff"].values()) < 1e-4
    exported = onnx.load(str(tmp_path / "pruned.onnx"))
    assert [o.name for o in exported.graph.output] == module.output_names
    got = session(str(tmp_path / "pruned.onnx")).run(None, {n: feeds[n] for n in module.input_names})
    assert [g.shape for g in got] == shapes
    weights = [nh.to_array(t).shape for t in exported.graph.initializer]
    # the pruned conv's weight, fewer filters (a 1-D conv of few positions is exported as MatMul by [K C, Co]:
    # `onnxkit.conv_rows`)
    assert any((len(s) >= 3 and s[0] == before - k) or (len(s) == 2 and s[1] == before - k) for s in weights)
    # the exported file reopens as a trainable module again (how a pruned stage is saved and resumed)
    again, _ = onnx_to_torch(tmp_path / "pruned.onnx")
    assert again.input_names == module.input_names and again.output_names == module.output_names
    assert max(conversion_parity(tmp_path / "pruned.onnx", again, feeds).values()) < 1e-4


def test_conv_bn_residual_prune_export(tmp_path):
    m = conv_bn_res()
    module, report = onnx_to_torch(m)
    assert module.input_names == ["x"] and module.output_names == ["y"]
    assert report.ops["Conv"] == 3 and report.ops["BatchNormalization"] == 1
    kinds = {type(mod).__name__ for mod in module.modules()}
    assert {"Conv2d", "BatchNorm2d", "Linear"} <= kinds
    conv1 = module.graph.nodes["conv1"].conv
    assert isinstance(conv1.weight, torch.nn.Parameter) and conv1.bias is not None  # the Add became the bias
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    prune_export_check(m, {"x": x}, "conv1", tmp_path)


def test_training_updates_converted_weights():
    torch.manual_seed(0)
    module, _ = onnx_to_torch(conv_bn_res())
    x = torch.randn(4, 3, 8, 8)
    target = torch.randn(4, 5)
    w0 = module.graph.nodes["conv2"].conv.weight.detach().clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x)[0], target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(w0, module.graph.nodes["conv2"].conv.weight.detach())


def test_nhwc_input(tmp_path):
    nodes = [h.make_node("Transpose", ["img"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             h.make_node("Conv", ["t", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=1, name="conv2"),
             h.make_node("Transpose", ["c2"], ["out"], perm=[0, 2, 3, 1], name="to_nhwc")]
    inits = [w("w1", 6, 3, 3, 3), w("b1", 6), nh.from_array(np.array(0, np.float32), "lo"),
             nh.from_array(np.array(6, np.float32), "hi"), w("w2", 4, 6, 1, 1), w("b2", 4)]
    m = model(nodes, [vi("img", [1, 16, 16, 3])], [vi("out", [1, 8, 8, 4])], inits)
    x = RNG.normal(size=(1, 16, 16, 3)).astype(np.float32)
    prune_export_check(m, {"img": x}, "conv1", tmp_path)


def lstm_model(op: str = "LSTM", direction: str = "bidirectional") -> onnx.ModelProto:
    """[B, 4, T] -> conv1d -> relu -> conv1d -> [T, B, 6] -> LSTM/GRU (initial state an input) -> Y, Y_h."""
    d, hs = (2 if direction == "bidirectional" else 1), 5
    g = 4 if op == "LSTM" else 3
    rnn_in = ["seq", "W", "R", "B", "", "h0"] + (["c0"] if op == "LSTM" else [])
    extra = {} if op == "LSTM" else {"linear_before_reset": 1}
    nodes = [h.make_node("Conv", ["x", "wa"], ["ca"], pads=[1, 1], name="conv_a"),
             h.make_node("Relu", ["ca"], ["ra"]),
             h.make_node("Conv", ["ra", "wb"], ["cb"], name="conv_b"),
             h.make_node("Transpose", ["cb"], ["seq"], perm=[2, 0, 1]),
             h.make_node(op, rnn_in, ["Y", "Y_h"], hidden_size=hs, direction=direction, name="rnn", **extra)]
    inits = [w("wa", 8, 4, 3), w("wb", 6, 8, 1), w("W", d, g * hs, 6), w("R", d, g * hs, hs), w("B", d, 2 * g * hs)]
    ins = [vi("x", [2, 4, 7]), vi("h0", [d, 2, hs])] + ([vi("c0", [d, 2, hs])] if op == "LSTM" else [])
    return model(nodes, ins, [vi("Y", [7, d, 2, hs]), vi("Y_h", [d, 2, hs])], inits)


@pytest.mark.parametrize("op,direction", [("LSTM", "bidirectional"), ("LSTM", "reverse"), ("GRU", "forward")])
def test_recurrent(tmp_path, op, direction):
    m = lstm_model(op, direction)
    module, _ = onnx_to_torch(m)
    assert any(isinstance(x, torch.nn.LSTM if op == "LSTM" else torch.nn.GRU) for x in module.modules())
    d = 2 if direction == "bidirectional" else 1
    feeds = {"x": RNG.normal(size=(2, 4, 7)).astype(np.float32), "h0": RNG.normal(size=(d, 2, 5)).astype(np.float32)}
    if op == "LSTM":
        feeds["c0"] = RNG.normal(size=(d, 2, 5)).astype(np.float32)
    prune_export_check(m, feeds, "conv_a", tmp_path)


def test_two_inputs_two_outputs_dynamic_reshape(tmp_path):
    """An image and an int64 index input; a Shape->Gather->Unsqueeze->Concat->Reshape chain keeps the batch."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Sigmoid", ["c1"], ["s1"]), h.make_node("Mul", ["c1", "s1"], ["a1"], name="silu"),
             h.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
             h.make_node("Shape", ["c2"], ["sh"]), h.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n", "ax0"], ["n1"]), h.make_node("Concat", ["n1", "minus1"], ["tgt"], axis=0),
             h.make_node("Reshape", ["c2", "tgt"], ["feat"], name="flatten"),
             h.make_node("Gather", ["table", "ids"], ["emb"], axis=0, name="lookup"),
             h.make_node("ReduceSum", ["emb", "ax1"], ["esum"], keepdims=0),
             h.make_node("MatMul", ["esum", "we"], ["e1"], name="proj"),
             h.make_node("Add", ["e1", "be"], ["score"], name="proj_bias")]
    inits = [w("w1", 6, 2, 3, 3), w("w2", 3, 6, 1, 1), i64("zero", 0), i64("ax0", [0]), i64("minus1", [-1]),
             w("table", 10, 4), i64("ax1", [1]), w("we", 4, 3), w("be", 3)]
    m = model(nodes, [vi("x", ["N", 2, 5, 5]), vi("ids", ["N", 3], T.INT64)],
              [vi("feat", ["N", 75]), vi("score", ["N", 3])], inits)
    feeds = {"x": RNG.normal(size=(2, 2, 5, 5)).astype(np.float32), "ids": RNG.integers(0, 10, (2, 3))}
    module, _ = onnx_to_torch(m)
    assert module.input_names == ["x", "ids"] and module.output_names == ["feat", "score"]
    assert module.graph.nodes["proj"].linear.bias is not None  # MatMul + Add -> one nn.Linear
    # the batch follows the live tensor: 3 samples through a module converted without shapes
    out = module(torch.randn(3, 2, 5, 5), torch.zeros(3, 3, dtype=torch.int64))
    assert [tuple(o.shape) for o in out] == [(3, 75), (3, 3)]
    prune_export_check(m, feeds, "conv1", tmp_path)


def if_model(const_cond: bool | None = None) -> onnx.ModelProto:
    """conv -> relu -> conv, then If(mean(x) > 0 or a constant): then = conv in the branch, else = x * 2."""
    then_g = h.make_graph([h.make_node("Conv", ["c2", "wt"], ["yt"], name="then_conv")], "then", [],
                          [vi("yt", None)], [w("wt", 3, 3, 1, 1)])
    else_g = h.make_graph([h.make_node("Mul", ["c2", "two"], ["ye"], name="else_mul")], "else", [], [vi("ye", None)],
                          [nh.from_array(np.array(2, np.float32), "two")])
    cond = ([h.make_node("ReduceMean", ["x"], ["mx"], keepdims=0), h.make_node("Greater", ["mx", "zf"], ["cond"])]
            if const_cond is None else [h.make_node("Constant", [], ["cond"], value=nh.from_array(np.array(const_cond)))])
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"), *cond,
             h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    inits = [w("w1", 6, 3, 3, 3), w("w2", 3, 6, 1, 1), nh.from_array(np.array(0, np.float32), "zf")]
    return model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 3, 6, 6])], inits)


def test_if_runtime_condition(tmp_path):
    m = if_model()
    module, _ = onnx_to_torch(m)
    for shift in (1.0, -1.0):  # both branches, picked at run time
        x = (RNG.normal(size=(1, 3, 6, 6)) + shift).astype(np.float32)
        assert max(conversion_parity(m, module, {"x": x}).values()) < 1e-4
    branch = module.graph.nodes["branch"]
    assert isinstance(branch.then_branch.nodes["then_conv"].conv, torch.nn.Conv2d)  # weights inside the branch
    prune_export_check(m, {"x": (RNG.normal(size=(1, 3, 6, 6)) + 1).astype(np.float32)}, "conv1", tmp_path)


def test_if_constant_condition_folds():
    m = if_model(const_cond=False)
    module, report = onnx_to_torch(m)
    branch = module.graph.nodes["branch"]
    assert branch.fixed is False and not hasattr(branch, "then_branch")
    assert any("constant condition" in n for n in report.notes)
    x = np.ones((1, 3, 6, 6), np.float32)
    assert max(conversion_parity(m, module, {"x": x}).values()) < 1e-4


def test_unconvertible_op_is_one_line(tmp_path):
    nodes = [h.make_node("Relu", ["boxes"], ["b"]),
             h.make_node("NonMaxSuppression", ["b", "scores"], ["sel"], name="nms_1")]
    m = model(nodes, [vi("boxes", [1, 4, 4]), vi("scores", [1, 1, 4])], [vi("sel", [None, 3], T.INT64)], [])
    p = tmp_path / "det.onnx"
    onnx.save(m, str(p))
    with pytest.raises(EdgeslimError) as e:
        onnx_to_torch(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg and "'nms_1'" in msg and "NonMaxSuppression" in msg and "supported ops:" in msg


def test_an_already_quantized_model_is_one_line_naming_the_float_model(tmp_path):
    nodes = [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="x_quant"),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], [])
    p = tmp_path / "q.onnx"
    onnx.save(m, str(p))
    with pytest.raises(EdgeslimError) as e:
        onnx_to_torch(p)
    msg = str(e.value)
    assert "\n" not in msg and "supported ops:" not in msg
    assert str(p) in msg and "'x_quant'" in msg and "already quantized" in msg and "float model" in msg


def test_reshape_rule_follows_pruned_channels():
    from edgeslim.onnxtorch.ops import reshape_rule

    assert reshape_rule([2, 8, 1, 1], [2, 8]) == [("in", 0, 1), ("in", 1, 4)]
    assert reshape_rule([2, 12], [2, 3, 4]) == [("in", 0, 1), ("const", -1, 0), ("const", 4, 0)]
    assert reshape_rule([2, 3, 4], [2, 12, 1]) == [("in", 0, 1), ("in", 1, 3), ("const", 1, 0)]


def test_dynamic_export_keeps_symbolic_dims_and_every_input(tmp_path):
    """dynamic=True: the source's symbolic batch stays symbolic (a Shape->Reshape chain stays live); an int64 scalar
    input decided at trace time (a sample-rate-like If condition) is still declared by the exported file."""
    then_g = h.make_graph([h.make_node("Mul", ["c1", "two"], ["yt"])], "then", [], [vi("yt", None)],
                          [nh.from_array(np.array(2, np.float32), "two")])
    else_g = h.make_graph([h.make_node("Neg", ["c1"], ["ye"])], "else", [], [vi("ye", None)], [])
    nodes = [h.make_node("Conv", ["x", "w1"], ["c0"], name="conv1"),
             h.make_node("Shape", ["c0"], ["sh"]), h.make_node("Slice", ["sh", "s0", "s1"], ["n"]),
             h.make_node("Concat", ["n", "minus1"], ["tgt"], axis=0), h.make_node("Reshape", ["c0", "tgt"], ["c1"]),
             h.make_node("Equal", ["sr", "k16"], ["cond"]),
             h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="rate")]
    inits = [w("w1", 4, 2, 1, 1), i64("s0", [0]), i64("s1", [1]), i64("minus1", [-1]), i64("k16", 16000)]
    m = model(nodes, [vi("x", ["N", 2, 3, 3]), vi("sr", [], T.INT64)], [vi("y", ["N", 36])], inits)
    module, _ = onnx_to_torch(m)
    assert module.dynamic_axes == {"x": {0: "N"}, "y": {0: "N"}}
    sr = np.array(16000, np.int64)
    res = export_converted(module, {"x": RNG.normal(size=(1, 2, 3, 3)).astype(np.float32), "sr": sr},
                           tmp_path / "dyn.onnx", dynamic=True)
    assert res["parity_max_abs_diff"]["y"] < 1e-5
    sess = session(str(tmp_path / "dyn.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["x", "sr"]
    x3 = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    got = sess.run(None, {"x": x3, "sr": sr})[0]
    ref = session(m.SerializeToString()).run(None, {"x": x3, "sr": sr})[0]
    assert got.shape == (3, 36) and np.abs(got - ref).max() < 1e-5


def test_unprunable_layers_and_metapruner_keep_outputs(tmp_path):
    """Output layers, layers feeding a per-channel constant (a decomposed LayerNorm's gamma) or a head-splitting
    Reshape are listed; MetaPruner with them ignored prunes the rest and every output keeps its shape."""
    from edgeslim.onnxtorch import unprunable_layers

    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             h.make_node("Mul", ["c2", "gamma"], ["g2"], name="gamma_mul"),
             h.make_node("Flatten", ["r1"], ["f1"], axis=1),
             h.make_node("Gemm", ["f1", "wl"], ["l1"], transB=1, name="fc_heads"),
             h.make_node("Reshape", ["l1", "heads"], ["hsplit"], name="split_heads"),
             h.make_node("ReduceMean", ["hsplit"], ["hm"], axes=[2], keepdims=0),
             h.make_node("Conv", ["g2", "w3"], ["y1"], name="conv_out")]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 6, 8, 1, 1), w("b2", 6), w("gamma", 1, 6, 1, 1),
             w("wl", 8, 8 * 16), i64("heads", [-1, 2, 4]), w("w3", 5, 6, 1, 1)]
    m = model(nodes, [vi("x", [1, 3, 4, 4])], [vi("y1", [1, 5, 4, 4]), vi("hm", [1, 2])], inits)
    module, _ = onnx_to_torch(m)
    names = {id(mod): k for k, mod in module.named_modules()}
    listed = sorted(names[id(x)] for x in unprunable_layers(module))
    assert listed == ["graph.nodes.conv2.conv", "graph.nodes.conv_out.conv", "graph.nodes.fc_heads.linear"]
    x = RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)
    args = (torch.from_numpy(x),)
    pruner = tp.pruner.MetaPruner(module, args, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=unprunable_layers(module))
    pruner.step()
    assert module.graph.nodes["conv1"].conv.out_channels == 4  # conv1 pruned, the Flatten->Gemm follows
    assert [tuple(o.shape) for o in module(*args)] == [(1, 5, 4, 4), (1, 2)]
    res = export_converted(module, {"x": x}, tmp_path / "p.onnx")
    assert max(res["parity_max_abs_diff"].values()) < 1e-4


@pytest.mark.parametrize("opset", [11, 17])
def test_op_semantics_match_onnxruntime(opset):
    """Reflect pad of a 3-D audio tensor, asymmetric MaxPool, nearest Resize, negative-step Slice, Split, Softmax
    (opset 11's 2-D coercion), HardSigmoid, Clip, ReduceMean, ConstantOfShape: parity with ONNX Runtime."""
    ax = (lambda name, v: [i64(name, v)]) if opset >= 13 else (lambda name, v: [])
    sq_in = ["p", "ax1"] if opset >= 13 else ["p"]
    sq_kw = {} if opset >= 13 else {"axes": [1]}
    split_kw = {"split": [3, 5]} if opset < 13 else {}
    split_in = ["c", "splits"] if opset >= 13 else ["c"]
    nodes = [h.make_node("Pad", ["a", "pads"], ["p"], mode="reflect"),                       # [1, 1, 20] -> [1, 1, 26]
             h.make_node("Squeeze", sq_in, ["s"], **sq_kw),                                 # [1, 26]
             h.make_node("Slice", ["s", "st", "en", "axs", "stp"], ["rev"]),               # reversed, every 2nd
             h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),                    # [1, 8, 6, 6]
             h.make_node("Split", split_in, ["c1", "c2"], axis=1, **split_kw),
             h.make_node("MaxPool", ["c1"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
             h.make_node("Resize", ["mp", "roi", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             h.make_node("HardSigmoid", ["c2"], ["hs"], alpha=0.3),
             h.make_node("Clip", ["hs", "lo", "hi"], ["cl"]),
             h.make_node("ReduceMean", ["cl"], ["rm"], axes=[2, 3], keepdims=1),
             h.make_node("Softmax", ["rm"], ["sm"], axis=1),
             h.make_node("Shape", ["up"], ["shp"]),
             h.make_node("ConstantOfShape", ["shp"], ["ones"], value=nh.from_array(np.array([1.5], np.float32))),
             h.make_node("Add", ["up", "ones"], ["upo"])]
    inits = [i64("pads", [0, 0, 3, 0, 0, 3]), i64("st", [-1]), i64("en", [-100]), i64("axs", [1]), i64("stp", [-2]),
             w("w1", 8, 2, 3, 3), nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             nh.from_array(np.zeros(0, np.float32), "roi"),
             nh.from_array(np.array(0.1, np.float32), "lo"), nh.from_array(np.array(0.8, np.float32), "hi"),
             *ax("ax1", [1]), *ax("splits", [3, 5])]
    m = model(nodes, [vi("a", [1, 1, 20]), vi("x", [1, 2, 6, 6])],
              [vi("rev", [1, 13]), vi("upo", [1, 3, 6, 6]), vi("sm", [1, 5, 1, 1])], inits, opset=opset)
    module, _ = onnx_to_torch(m)
    feeds = {"a": RNG.normal(size=(1, 1, 20)).astype(np.float32), "x": RNG.normal(size=(1, 2, 6, 6)).astype(np.float32)}
    errs = conversion_parity(m, module, feeds)
    assert max(errs.values()) < 1e-5, errs


def test_unsorted_graph_and_bad_path(tmp_path):
    """Nodes listed before their producers (as some tools write them) convert in dependency order; a missing
    file is one EdgeslimError line naming it."""
    m = conv_bn_res()
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(m)
    nodes = list(shuffled.graph.node)[::-1]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    module, _ = onnx_to_torch(shuffled)
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert conversion_parity(m, module, {"x": x})["y"] < 1e-4
    with pytest.raises(EdgeslimError, match="nope.onnx"):
        onnx_to_torch(tmp_path / "nope.onnx")


def test_loop_runs_eagerly():
    """Loop with a trip count from an input, a carried value and a scan output (conv weights in the body)."""
    body = h.make_graph(
        [h.make_node("Conv", ["acc_in", "wb"], ["c"], pads=[1, 1, 1, 1], name="body_conv"),
         h.make_node("Tanh", ["c"], ["acc_out"]), h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("ReduceMean", ["acc_out"], ["m"], keepdims=0)],
        "body", [vi("i", [], T.INT64), vi("cond_in", [], T.BOOL), vi("acc_in", None)],
        [vi("cond_out", [], T.BOOL), vi("acc_out", None), vi("m", [])], [w("wb", 2, 2, 3, 3)])
    nodes = [h.make_node("Loop", ["n", "", "x"], ["y", "trace"], body=body, name="loop")]
    m = model(nodes, [vi("n", [], T.INT64), vi("x", [1, 2, 5, 5])], [vi("y", [1, 2, 5, 5]), vi("trace", [None])], [])
    module, report = onnx_to_torch(m)
    assert report.ops["Loop"] == 1 and report.ops["Conv"] == 1
    assert isinstance(module.graph.nodes["loop"].body.nodes["body_conv"].conv, torch.nn.Conv2d)
    x = RNG.normal(size=(1, 2, 5, 5)).astype(np.float32)
    for n in (0, 3):
        errs = conversion_parity(m, module, {"n": np.array(n, np.int64), "x": x})
        assert max(errs.values()) < 1e-5, errs
