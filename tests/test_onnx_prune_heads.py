"""Converted ONNX heads that flatten pruned channels (issue 23): a conv trunk whose output is flattened into a Gemm by
a Reshape whose target carries the channel count as a constant (PP-OCR cls: Concat(live batch, constant C*H*W);
a constant [-1, C*H*W] / [0, C*H*W] target) is pruned by the run's pruner (`make_pruner` on `TeacherView`), runs
at any batch, and exports back to ONNX with parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgeslim.onnxkit.session import session
from edgeslim.onnxtorch import conversion_parity, export_converted, onnx_to_torch
from edgeslim.prune.structured import make_pruner
from edgeslim.run.onnx import TeacherView

RNG = np.random.default_rng(0)
C, HW = 8, 2 * 4  # the last conv's channels and spatial size after the pool: the head reads C * HW = 64 features


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return nh.from_array(RNG.normal(0, 0.5, shape).astype(np.float32), name)


def _i64(name: str, v: list[int] | int) -> onnx.TensorProto:
    return nh.from_array(np.array(v, np.int64), name)


def head_model(target: str) -> onnx.ModelProto:
    """conv -> relu -> conv -> relu -> maxpool -> Reshape(target) -> Gemm -> Softmax; `target`: "concat" (live batch
    + constant C*H*W, as PP-OCR cls), "minus1" ([-1, C*H*W]) or "zero" ([0, C*H*W])."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = [_w("w1", 12, 3, 3, 3), _w("w2", C, 12, 3, 3), _w("wl", 5, C * HW), _w("bl", 5)]
    if target == "concat":
        nodes += [h.make_node("Shape", ["p"], ["sh"]), h.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
                  h.make_node("Unsqueeze", ["n", "ax0"], ["n1"]), h.make_node("Concat", ["n1", "feat"], ["tgt"], axis=0)]
        inits += [_i64("zero", 0), _i64("ax0", [0]), _i64("feat", [C * HW])]
    else:
        inits.append(_i64("tgt", [-1 if target == "minus1" else 0, C * HW]))
    nodes += [h.make_node("Reshape", ["p", "tgt"], ["f"], name="flatten"),
              h.make_node("Gemm", ["f", "wl", "bl"], ["logits"], transB=1, name="fc"),
              h.make_node("Softmax", ["logits"], ["y"], axis=1)]
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4, 8])],
                                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 5])], inits),
                     opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("target", ["concat", "minus1", "zero"])
def test_head_reshape_follows_pruned_channels(target, tmp_path):
    m = head_model(target)
    feeds = {"x": RNG.normal(size=(3, 3, 4, 8)).astype(np.float32)}
    module, _ = onnx_to_torch(m)
    assert max(conversion_parity(m, module, feeds).values()) < 1e-5
    view = TeacherView(module).eval()
    pruner, steps = make_pruner(view, (3, 4, 8), ratio=0.5, importance="l2")
    for _ in range(steps):
        pruner.step()
    conv2, fc = module.graph.nodes["conv2"].conv, module.graph.nodes["fc"].linear
    assert conv2.out_channels == C // 2 and fc.in_features == C // 2 * HW and fc.out_features == 5
    assert module.graph.nodes["conv1"].conv.out_channels == 6
    for n in (1, 3, 64):  # the batch of training (64) and of a validation remainder (3): the live batch is kept
        out = view(torch.randn(n, 3, 4, 8))
        assert out.shape == (n, 5) and torch.allclose(out.sum(1), torch.ones(n), atol=1e-5)
    res = export_converted(module, feeds, tmp_path / "pruned.onnx", dynamic=True)
    assert max(res["parity_max_abs_diff"].values()) < 1e-4
    with torch.no_grad():
        ref = module(torch.from_numpy(np.repeat(feeds["x"], 3, 0)[:7]))[0].numpy()
    got = session(str(tmp_path / "pruned.onnx")).run(None, {"x": np.repeat(feeds["x"], 3, 0)[:7]})[0]
    assert got.shape == (7, 5) and np.abs(got - ref).max() < 1e-4  # another batch than the trace's


def crnn_like(path) -> None:
    """A batch fixed at 1 whose output puts the batch on axis 1 (a CRNN's [T, 1, C], as ddddocr's common.onnx):
    conv -> relu -> conv -> relu -> mean over H -> [1, C, W] -> Transpose [W, 1, C] -> MatMul -> Softmax."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("ReduceMean", ["r2", "axh"], ["m"], keepdims=0),
             h.make_node("Transpose", ["m"], ["t"], perm=[2, 0, 1]),
             h.make_node("MatMul", ["t", "wl"], ["logits"], name="fc"),
             h.make_node("Softmax", ["logits"], ["y"], axis=2)]
    inits = [_w("w1", 12, 1, 3, 3), _w("w2", 16, 12, 3, 3), _i64("axh", [2]), _w("wl", 16, 5)]
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 8, 16])],
                                  [h.make_tensor_value_info("y", T.FLOAT, [16, 1, 5])], inits),
                     opset_imports=[h.make_opsetid("", 18)])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def test_batch_fixed_at_one_with_batch_on_another_axis_runs_per_sample(tmp_path):
    """Teacher targets and the trained view take one row per sample (not one per time step): the run prunes,
    trains and exports; held-out fidelity is per sample."""
    import json

    from reliability_helpers import main_inproc

    crnn_like(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=RNG.normal(size=(50, 1, 8, 16)).astype(np.float32))
    (tmp_path / "r.yaml").write_text("version: 1\nfinetune: {epochs: 3, lr: 0.002, batch_size: 8}\n"
                                     "passes:\n  - structured_prune: {ratio: 0.5}\n")
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(tmp_path / "m.onnx"), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    base, pruned = res["stages"]
    assert pruned["fidelity"]["samples"] == 10 and pruned["fidelity"]["split"] == "test"
    assert pruned["params"] < 0.6 * base["params"]
    assert pruned["fidelity"]["cosine"] > 0.9
    assert max(pruned["notes"]["parity_max_abs_diff"].values()) < 1e-4
