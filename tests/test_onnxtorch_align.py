"""A converted model exported back to ONNX is as fast as its source: no extra node kinds (Cast, If, shape
arithmetic) and pruned channel counts padded so ONNX Runtime's NCHWc kernels take every convolution."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgeslim.onnxkit.session import session
from edgeslim.onnxtorch import export_converted, onnx_to_torch
from edgeslim.onnxtorch.align import align_channels

RNG = np.random.default_rng(0)
SLOW = ("Cast", "If", "Shape", "Gather", "Where", "Equal", "Identity", "Expand", "ConstantOfShape", "Unsqueeze",
        "Squeeze", "Slice", "Transpose")  # Constant nodes are not in it: ONNX Runtime makes them initializers


def w(name: str, *shape: int, lo: float | None = None) -> onnx.TensorProto:
    a = RNG.uniform(lo, 1.5, shape) if lo is not None else RNG.normal(0, 0.3, shape)
    return nh.from_array(a.astype(np.float32), name)


def pruned_like() -> onnx.ModelProto:
    """Channel counts as pruning leaves them (22, 24 -> concat 46, 20): SiLU conv -> conv + residual Add ->
    BatchNormalization -> Concat with a second conv -> depthwise conv -> per-channel Mul -> Resize -> conv ->
    MaxPool -> output 'y'; a 20-channel conv reaches output 'z' through a Reshape (must stay as it is)."""
    nodes = [
        h.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Sigmoid", ["a"], ["as"]), h.make_node("Mul", ["a", "as"], ["a1"]),
        h.make_node("Conv", ["a1", "wb"], ["b"], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["a1", "b"], ["r"]),
        h.make_node("BatchNormalization", ["r", "s", "bb", "m", "v"], ["rn"]),
        h.make_node("Conv", ["x", "wc"], ["c"]),
        h.make_node("Relu", ["c"], ["cr"]),
        h.make_node("Concat", ["rn", "cr"], ["cat"], axis=1),
        h.make_node("Conv", ["cat", "wdw", "bdw"], ["dw"], pads=[1, 1, 1, 1], group=46),
        h.make_node("Mul", ["dw", "k"], ["dwk"]),
        h.make_node("Resize", ["dwk", "", "scales"], ["up"], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        h.make_node("Conv", ["up", "wd"], ["d"]),
        h.make_node("MaxPool", ["d"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["x", "we"], ["e"]),
        h.make_node("Reshape", ["e", "shape"], ["z"]),
    ]
    inits = [w("wa", 22, 16, 3, 3), w("ba", 22), w("wb", 22, 22, 3, 3), w("s", 22, lo=0.5), w("bb", 22), w("m", 22),
             w("v", 22, lo=0.5), w("wc", 24, 16, 1, 1), w("wdw", 46, 1, 3, 3), w("bdw", 46), w("k", 1, 46, 1, 1),
             nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales"), w("wd", 32, 46, 1, 1),
             w("we", 20, 16, 1, 1), nh.from_array(np.array([0, 20, -1], np.int64), "shape")]
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 16, 8, 8])],
                                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 32, 8, 8]),
                                   h.make_tensor_value_info("z", T.FLOAT, ["N", 20, 64])], inits),
                     opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _conv_channels(m: onnx.ModelProto) -> list[tuple[int, int]]:
    shapes = {t.name: t.dims for t in m.graph.initializer}
    return [(int(shapes[n.input[1]][0]), int(shapes[n.input[1]][1])) for n in m.graph.node if n.op_type == "Conv"]


def _nchwc_convs(data: bytes, tmp_path) -> tuple[int, int]:
    """(convolutions ONNX Runtime, all optimisations, this CPU, runs in its NCHWc layout, the others)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    convs = [n for n in opt.graph.node if n.op_type in ("Conv", "FusedConv")]
    nchwc = sum(1 for n in convs if n.domain == "com.microsoft.nchwc")
    return nchwc, len(convs) - nchwc


def test_reexport_has_no_slow_extra_nodes_and_aligned_channels(tmp_path):
    m = pruned_like()
    x = RNG.normal(size=(2, 16, 8, 8)).astype(np.float32)
    module, _ = onnx_to_torch(m)
    res = export_converted(module, {"x": x}, tmp_path / "re.onnx", dynamic=True)
    assert max(res["parity_max_abs_diff"].values()) < 1e-4
    assert res["aligned_convs"] == 2  # a and b (one residual group); c has 24 channels already
    re = onnx.load(str(tmp_path / "re.onnx"))
    # parity with the source graph in ONNX Runtime, at another batch than the export's
    x3 = RNG.normal(size=(3, 16, 8, 8)).astype(np.float32)
    ref = session(m.SerializeToString()).run(None, {"x": x3})
    got = session(str(tmp_path / "re.onnx")).run(None, {"x": x3})
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert max(float(np.abs(r - g).max()) for r, g in zip(ref, got)) < 1e-4
    # no more nodes of the slow kinds than the source, and the same compute nodes
    src_ops = collections.Counter(n.op_type for n in m.graph.node)
    re_ops = collections.Counter(n.op_type for n in re.graph.node)
    for op in SLOW:
        assert re_ops[op] <= src_ops[op], (op, re_ops)
    for op in ("Conv", "Sigmoid", "Concat", "MaxPool", "Resize"):
        assert re_ops[op] == src_ops[op], (op, re_ops)
    # channel counts: 22 padded to 24 (the residual pair alike), read by zero columns (46 -> 48 in the
    # depthwise conv and the conv after it); the 20-channel conv feeding a Reshape and output 'z' stays 20
    assert _conv_channels(re) == [(24, 16), (24, 24), (24, 16), (48, 1), (32, 48), (20, 16)]
    # ONNX Runtime takes every convolution into NCHWc once padded (where this CPU has NCHWc kernels at all)
    before, after = _nchwc_convs(m.SerializeToString(), tmp_path), _nchwc_convs(re.SerializeToString(), tmp_path)
    assert after[0] >= before[0]
    if after[0]:
        assert after[1] == 0 and before[1] > 0, (before, after)


def test_align_leaves_what_it_cannot_follow():
    """Padding that would reach a divisor (x / 0), a graph output or a Reshape is not made; a graph whose
    counts are multiples already is returned unchanged."""
    m = pruned_like()
    div = m.graph.node[2]
    div.op_type = "Div"  # a / sigmoid(a): the padded sigmoid channels (0.5) are fine, but here a reads them
    div.input[:] = ["as", "a"]
    assert align_channels(pruned_like(), 8)[1] == 2  # without the Div: a and b padded
    out, n = align_channels(m, 8)
    assert n == 0  # a, b (residual group through the Div) and e (Reshape) stay
    assert _conv_channels(out)[:3] == [(22, 16), (22, 22), (24, 16)] and _conv_channels(out)[-1] == (20, 16)
    x = RNG.normal(size=(1, 16, 8, 8)).astype(np.float32)
    ref = session(m.SerializeToString()).run(None, {"x": x})
    got = session(out.SerializeToString()).run(None, {"x": x})
    assert max(float(np.abs(r - g).max()) for r, g in zip(ref, got)) < 1e-4
    same, n = align_channels(out, 2)
    assert n == 0 and _conv_channels(same) == _conv_channels(out)


def test_single_ops_stay_single_and_train(tmp_path):
    """HardSigmoid (Paddle's alpha 0.2), GlobalAveragePool and a Squeeze of a dynamic-looking dim come back as the
    same single ops (not Mul/Add/Clip, ReduceMean, an If on the dim's size); the HardSigmoid's gradient is right."""
    import torch

    nodes = [h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("HardSigmoid", ["c"], ["hs"], alpha=0.2, beta=0.5),
             h.make_node("GlobalAveragePool", ["hs"], ["g"]), h.make_node("Squeeze", ["g", "ax"], ["y"])]
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, "H", "W"])],
                                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 8])],
                                  [w("w", 8, 3, 3, 3), nh.from_array(np.array([2, 3], np.int64), "ax")]),
                     opset_imports=[h.make_opsetid("", 17)])
    module, _ = onnx_to_torch(m)
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    res = export_converted(module, {"x": x}, tmp_path / "re.onnx", dynamic=True)
    assert max(res["parity_max_abs_diff"].values()) < 1e-5
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "re.onnx")).graph.node)
    assert ops["HardSigmoid"] == ops["GlobalAveragePool"] == ops["Squeeze"] == 1
    assert ops["Clip"] == ops["ReduceMean"] == ops["If"] == 0
    x2 = RNG.normal(size=(1, 3, 12, 10)).astype(np.float32)  # other spatial dims: still one Squeeze that works
    got = session(str(tmp_path / "re.onnx")).run(None, {"x": x2})[0]
    assert np.abs(got - session(m.SerializeToString()).run(None, {"x": x2})[0]).max() < 1e-5
    xt = torch.from_numpy(x).requires_grad_()
    module(xt)[0].sum().backward()
    conv = next(mod for mod in module.modules() if isinstance(mod, torch.nn.Conv2d))
    xr = torch.from_numpy(x).requires_grad_()  # the reference: torch's own ops, autograd end to end
    torch.clamp(0.2 * conv(xr) + 0.5, 0, 1).mean(dim=(2, 3)).sum().backward()
    assert xt.grad is not None and xr.grad is not None and torch.allclose(xt.grad, xr.grad, atol=1e-6)


def test_padding_that_fails_parity_is_dropped(tmp_path, monkeypatch):
    """A padded graph that ONNX Runtime does not run like the module is not written: the plain export is."""
    import edgeslim.onnxtorch.align as align

    def broken(m: onnx.ModelProto, multiple: int = 16) -> tuple[onnx.ModelProto, int]:
        out = onnx.ModelProto()
        out.CopyFrom(m)
        t = out.graph.initializer[0]
        t.CopyFrom(nh.from_array(nh.to_array(t) * 2, t.name))
        return out, 1

    monkeypatch.setattr(align, "align_channels", broken)
    module, _ = onnx_to_torch(pruned_like())
    x = RNG.normal(size=(1, 16, 8, 8)).astype(np.float32)
    res = export_converted(module, {"x": x}, tmp_path / "re.onnx")
    assert res["aligned_convs"] == 0 and max(res["parity_max_abs_diff"].values()) < 1e-4
    assert (20, 16) in _conv_channels(onnx.load(str(tmp_path / "re.onnx")))  # not padded, and runs right
    assert (22, 16) in _conv_channels(onnx.load(str(tmp_path / "re.onnx")))


def test_operand_met_before_its_mask():
    """Mul(a, Relu(Sigmoid(a))): the Mul is met while its second operand has no mask yet; the group still pads."""
    m = pruned_like()
    nodes = list(m.graph.node)
    nodes[2].input[:] = ["a", "asr"]
    nodes.insert(2, h.make_node("Relu", ["as"], ["asr"]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    out, n = align_channels(m, 8)
    assert n == 2 and _conv_channels(out)[:3] == [(24, 16), (24, 24), (24, 16)]
    x = RNG.normal(size=(1, 16, 8, 8)).astype(np.float32)
    ref = session(m.SerializeToString()).run(None, {"x": x})
    got = session(out.SerializeToString()).run(None, {"x": x})
    assert max(float(np.abs(r - g).max()) for r, g in zip(ref, got)) < 1e-4


def test_pruned_transposed_conv_reloads():
    """A stage whose transposed conv lost input channels reopens (`models.spec.resize_to_state_dict`: the weight
    of a transposed conv is [in, out / groups, ...]) and computes what the pruned module computed."""
    import torch
    from torch import nn

    from edgeslim.models.spec import resize_to_state_dict

    torch.manual_seed(0)
    pruned = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ConvTranspose2d(5, 4, 2, stride=2, output_padding=1, groups=1))
    fresh = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ConvTranspose2d(6, 4, 2, stride=2, output_padding=1))
    resize_to_state_dict(fresh, pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(fresh(x), pruned(x)) and fresh(x).shape == (1, 4, 13, 13)
