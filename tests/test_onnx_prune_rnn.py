"""Converted ONNX graphs of the wheel models' shapes that channel pruning used to break (issue 23, fifth session):

- conv trunk -> Transpose -> Reshape (C*H merged by a target computed from Shape/Gather/Mul/Concat) -> bidirectional
  LSTM -> MatMul head, batch fixed at 1 (ddddocr common.onnx): the convs are pruned, the LSTM keeps its hidden units
  and loses the input features of the pruned channels (all H rows of each);
- an STFT conv whose output is cut by constant Slices into real and imaginary halves -> magnitude -> conv encoder
  (silero VAD): Torch-Pruning's importance failed with `IndexError: index 9 is out of bounds for dimension 0 with
  size 9` when the STFT conv was prunable; `onnxtorch.keep_whole` keeps it whole.

Each goes ONNX -> trainable -> pruned (the run's pruner: `make_pruner` on `TeacherView`) -> ONNX with parity, and
through `edgeslim run` with one-shot `structured_prune` and `any-model`'s structured `sensitivity_prune`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from reliability_helpers import assert_user_error, main_inproc

from edgeslim.onnxtorch import conversion_parity, export_converted, keep_whole, onnx_to_torch
from edgeslim.prune.structured import make_pruner
from edgeslim.run.onnx import TeacherView

RNG = np.random.default_rng(0)
HID, K = 5, 7  # LSTM hidden units per direction, classes of the CTC-like head
F = 9  # STFT bins: the conv makes 2 * F channels, real then imaginary


def _w(name: str, *shape: int, s: float = 0.5) -> onnx.TensorProto:
    return nh.from_array(RNG.normal(0, s, shape).astype(np.float32), name)


def _i64(name: str, v: list[int] | int) -> onnx.TensorProto:
    return nh.from_array(np.array(v, np.int64), name)


def _model(nodes: list, inits: list, x: list, y: list) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, x)],
                                  [h.make_tensor_value_info("y", T.FLOAT, y)], inits),
                     opset_imports=[h.make_opsetid("", 12)])
    onnx.checker.check_model(m)
    return m


def crnn_lstm() -> onnx.ModelProto:
    """x [1, 1, 4, 12] -> conv(8) -> relu -> conv(6, stride (2, 1)) -> relu [1, 6, 2, 12] -> Transpose [12, 1, 6, 2]
    -> Reshape to [T, B, C*H] computed from its Shape -> LSTM (bidirectional, 5) -> Transpose [12, 1, 2, 5] ->
    Reshape [0, 0, -1] -> MatMul [10, 7] -> Softmax: y [12, 1, 7] (ddddocr common.onnx's layout, small)."""
    def dim(i: int, src: str = "t") -> list:
        return [h.make_node("Shape", [src], [f"s{i}"]), h.make_node("Gather", [f"s{i}", f"i{i}"], [f"d{i}"], axis=0)]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 1], name="conv2"),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("Transpose", ["r2"], ["t"], perm=[3, 0, 1, 2]),
             *dim(0), *dim(1), *dim(2), *dim(3),
             h.make_node("Mul", ["d2", "d3"], ["ch"]),
             h.make_node("Unsqueeze", ["d0"], ["u0"], axes=[0]), h.make_node("Unsqueeze", ["d1"], ["u1"], axes=[0]),
             h.make_node("Unsqueeze", ["ch"], ["u2"], axes=[0]),
             h.make_node("Concat", ["u0", "u1", "u2"], ["tgt"], axis=0),
             h.make_node("Reshape", ["t", "tgt"], ["seq"]),
             h.make_node("LSTM", ["seq", "W", "R", "B"], ["Y", "", ""], direction="bidirectional", hidden_size=HID,
                         name="lstm"),
             h.make_node("Transpose", ["Y"], ["yt"], perm=[0, 2, 1, 3]),
             h.make_node("Reshape", ["yt", "flat"], ["yf"]),
             h.make_node("MatMul", ["yf", "wl"], ["logits"], name="fc"),
             h.make_node("Softmax", ["logits"], ["y"], axis=2)]
    inits = [_w("w1", 8, 1, 3, 3), _w("b1", 8), _w("w2", 6, 8, 3, 3), _w("b2", 6), _w("W", 2, 4 * HID, 12),
             _w("R", 2, 4 * HID, HID), _w("B", 2, 8 * HID, s=0.1), _w("wl", 2 * HID, K), _i64("flat", [0, 0, -1]),
             *[_i64(f"i{i}", i) for i in range(4)]]
    return _model(nodes, inits, [1, 1, 4, 12], [12, 1, K])


def crnn_gru() -> onnx.ModelProto:
    """`crnn_lstm` with a GRU (linear_before_reset=1, torch's GRU) in place of the LSTM."""
    m = crnn_lstm()
    inits = {t.name: t for t in m.graph.initializer}
    for name, shape in (("W", (2, 3 * HID, 12)), ("R", (2, 3 * HID, HID)), ("B", (2, 6 * HID))):
        inits[name].CopyFrom(nh.from_array(RNG.normal(0, 0.5, shape).astype(np.float32), name))
    for n in m.graph.node:
        if n.op_type == "LSTM":
            n.op_type = "GRU"
            del n.output[2]
            n.attribute.append(h.make_attribute("linear_before_reset", 1))
    onnx.checker.check_model(m)
    return m


def stft_vad() -> onnx.ModelProto:
    """x [N, 64] -> Unsqueeze [N, 1, 64] -> STFT conv (2F, k 16, stride 8) -> Slice [:F] / [F:] on the channels ->
    re^2 + im^2 -> Sqrt -> conv(F -> 8) -> relu -> conv(8 -> 8) -> relu -> mean over time -> Gemm(8 -> 1) -> Sigmoid:
    y [N, 1] (silero VAD's front end, small)."""
    nodes = [h.make_node("Unsqueeze", ["x"], ["xu"], axes=[1]),
             h.make_node("Conv", ["xu", "basis"], ["spec"], strides=[8], name="stft"),
             h.make_node("Slice", ["spec", "s0", "sF", "ax1"], ["re"]),
             h.make_node("Slice", ["spec", "sF", "s2F", "ax1"], ["im"]),
             h.make_node("Mul", ["re", "re"], ["re2"]), h.make_node("Mul", ["im", "im"], ["im2"]),
             h.make_node("Add", ["re2", "im2"], ["pw"]), h.make_node("Sqrt", ["pw"], ["mag"]),
             h.make_node("Conv", ["mag", "e1", "eb1"], ["c1"], pads=[1, 1], name="enc1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "e2", "eb2"], ["c2"], pads=[1, 1], name="enc2"),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("ReduceMean", ["r2"], ["m"], axes=[2], keepdims=0),
             h.make_node("Gemm", ["m", "wl", "bl"], ["logit"], transB=1, name="head"),
             h.make_node("Sigmoid", ["logit"], ["y"])]
    inits = [_w("basis", 2 * F, 1, 16), _i64("s0", [0]), _i64("sF", [F]), _i64("s2F", [2 * F]), _i64("ax1", [1]),
             _w("e1", 8, F, 3), _w("eb1", 8, s=0.1), _w("e2", 8, 8, 3), _w("eb2", 8, s=0.1), _w("wl", 1, 8),
             _w("bl", 1, s=0.1)]
    return _model(nodes, inits, ["N", 64], ["N", 1])


def _prune(view: TeacherView, shape: tuple[int, ...]) -> None:
    pruner, steps = make_pruner(view, shape, ratio=0.5, importance="l2")
    for _ in range(steps):
        pruner.step()


def test_conv_into_lstm_prunes_the_trunk_and_the_lstm_inputs(tmp_path):
    m = crnn_lstm()
    feeds = {"x": RNG.normal(size=(1, 1, 4, 12)).astype(np.float32)}
    module, _ = onnx_to_torch(m)
    assert max(conversion_parity(m, module, feeds).values()) < 1e-5
    lstm = module.graph.nodes["lstm"].rnn
    assert lstm in keep_whole(module)
    view = TeacherView(module, per_sample=True).eval()
    _prune(view, (1, 4, 12))
    g = module.graph.nodes
    assert g["conv1"].conv.out_channels == 4 and g["conv2"].conv.out_channels == 3
    assert lstm.input_size == 3 * 2 and lstm.hidden_size == HID  # 3 channels x 2 rows each; hidden kept
    assert g["fc"].linear.in_features == 2 * HID
    out = view(torch.randn(2, 1, 4, 12))  # per sample: each row is one sample's [12, 1, 7]
    assert out.shape == (2, 12 * K) and torch.allclose(out.reshape(2, 12, K).sum(2), torch.ones(2, 12), atol=1e-5)
    res = export_converted(module, feeds, tmp_path / "pruned.onnx")
    assert max(res["parity_max_abs_diff"].values()) < 1e-5


def test_stft_conv_cut_by_constant_slices_is_kept_whole(tmp_path):
    import torch_pruning as tp

    m = stft_vad()
    feeds = {"x": RNG.normal(size=(3, 64)).astype(np.float32)}
    module, _ = onnx_to_torch(m)
    assert max(conversion_parity(m, module, feeds).values()) < 1e-5
    stft = module.graph.nodes["stft"].conv
    assert stft in keep_whole(module)
    # what the run did before: only the output layer and the Linear/recurrent layers kept whole
    bare, _ = onnx_to_torch(m)
    lin = [x for x in bare.modules() if isinstance(x, torch.nn.Linear)]
    with pytest.raises(IndexError):
        tp.pruner.MetaPruner(bare, torch.zeros(2, 64), tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                             ignored_layers=lin).step()
    view = TeacherView(module).eval()
    _prune(view, (64,))
    g = module.graph.nodes
    assert stft.out_channels == 2 * F and g["enc1"].conv.in_channels == F
    assert g["enc1"].conv.out_channels == 4 and g["enc2"].conv.out_channels == 4
    assert g["head"].linear.in_features == 4
    res = export_converted(module, feeds, tmp_path / "pruned.onnx", dynamic=True)
    assert max(res["parity_max_abs_diff"].values()) < 1e-5
    x7 = RNG.normal(size=(7, 64)).astype(np.float32)
    from edgeslim.onnxkit.session import session

    with torch.no_grad():
        ref = module(torch.from_numpy(x7))[0].numpy()
    assert np.abs(session(str(tmp_path / "pruned.onnx")).run(None, {"x": x7})[0] - ref).max() < 1e-5


@pytest.mark.parametrize("graph", ["crnn_lstm", "stft_vad"])
@pytest.mark.parametrize("pass_", ["structured_prune: {ratio: 0.5}",
                                   "sensitivity_prune: {target: 0.4, mode: structured, max_ratio: 0.6, "
                                   "ratios: [0.25, 0.5]}"])
def test_run_prunes_and_exports(graph, pass_, tmp_path):
    """`edgeslim run` (no labels) prunes the converted graph and exports it back with parity; the sensitivity pass
    allocates ratios only to layers the pruner may prune."""
    m = crnn_lstm() if graph == "crnn_lstm" else stft_vad()
    onnx.save(m, str(tmp_path / "m.onnx"))
    shape = [1, 4, 12] if graph == "crnn_lstm" else [64]
    np.savez(tmp_path / "x.npz", x=RNG.normal(size=(40, *shape)).astype(np.float32))
    (tmp_path / "r.yaml").write_text("version: 1\nfinetune: {epochs: 1, lr: 0.001, batch_size: 8}\n"
                                     f"passes:\n  - {pass_}\n")
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(tmp_path / "m.onnx"), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(tmp_path / "run"))
    assert code == 0, err
    base, pruned = json.loads((tmp_path / "run" / "results.json").read_text())["stages"]
    assert pruned["params"] < 0.95 * base["params"] and pruned["macs"] < base["macs"]
    assert max(pruned["notes"]["parity_max_abs_diff"].values()) < 1e-4
    alloc = pruned["notes"].get("allocation")
    if alloc is not None:
        assert alloc and not any(k.endswith((".rnn", ".linear")) or "stft" in k for k in alloc)


def test_a_graph_torch_pruning_cannot_trace_is_one_line(tmp_path):
    """A conv -> GRU graph (Torch-Pruning 1.6 has no GRU pruner and cannot trace its decomposed CPU autograd graph):
    `run` with structured_prune exits 1 with one line naming Torch-Pruning and the ways around it, nothing written
    for the stage."""
    m = crnn_gru()
    module, _ = onnx_to_torch(m)
    assert max(conversion_parity(m, module, {"x": RNG.normal(size=(1, 1, 4, 12)).astype(np.float32)}).values()) < 1e-5
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "x.npz", x=RNG.normal(size=(20, 1, 4, 12)).astype(np.float32))
    (tmp_path / "r.yaml").write_text("version: 1\nfinetune: {epochs: 1, lr: 0.001, batch_size: 8}\n"
                                     "passes:\n  - structured_prune: {ratio: 0.5}\n")
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(tmp_path / "m.onnx"), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(tmp_path / "run"))
    assert_user_error(code, err, "structured_prune (stage 01_structured_prune)", "cannot handle this model's structure",
                      "magnitude_prune")
    assert not (tmp_path / "run" / "stages" / "01_structured_prune").exists()
