"""BN folding, dead-node removal, ONNX Runtime optimisation levels and the fusion list."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeslim.deploy.compile import (
    bn_folding_check,
    compile_ort,
    describe_fusions,
    fold_and_prune,
    folded_batchnorm,
)
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.graph import remove_dead


def conv_bn_relu() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 1, 6, 6),), buf, dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      input_names=["input"], output_names=["output"])
    return net, onnx.load_from_string(buf.getvalue())


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def test_fold_batchnorm_keeps_outputs():
    net, m = conv_bn_relu()
    assert bn_folding_check(m) == {"batchnorm_nodes": 1, "folded": False, "after_conv": 1}
    f, n = folded_batchnorm(m)
    assert n == 1 and bn_folding_check(f)["folded"]
    x = np.random.default_rng(0).random((1, 1, 6, 6), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(run(f, x) - ref).max() < 1e-5


def test_remove_dead_and_fold():
    _, m = conv_bn_relu()
    dangling = onnx.helper.make_node("Exp", [m.graph.input[0].name], ["unused"])
    m.graph.node.append(dangling)
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    assert remove_dead(m2) == 1
    assert all(n.output[0] != "unused" for n in m2.graph.node)
    out, info = fold_and_prune(m)
    assert info["nodes_after"] < info["nodes_before"]


def test_ort_levels_and_fusions(tmp_path):
    _, m = conv_bn_relu()
    f, _ = folded_batchnorm(m)
    src = tmp_path / "m.onnx"
    onnx.save(f, str(src))
    basic = compile_ort(src, tmp_path / "basic.onnx", "basic")
    ext = compile_ort(src, tmp_path / "ext.onnx", "extended")
    assert (tmp_path / "ext.onnx").exists() and ext.parity_max_abs_diff is not None
    assert ext.parity_max_abs_diff < 1e-5
    assert "com.microsoft.FusedConv" in ext.ops_after and "Relu" not in ext.ops_after
    assert any("FusedConv x1 (Conv + activation)" in line for line in ext.fusions)
    assert "com.microsoft.FusedConv" not in basic.ops_after
    with pytest.raises(EdgeslimError, match="valid: all, basic, disable, extended"):
        compile_ort(src, tmp_path / "x.onnx", "max")


def test_describe_fusions():
    lines = describe_fusions({"Conv": 2, "Relu": 2}, {"com.microsoft.FusedConv": 2})
    assert lines == ["com.microsoft.FusedConv x2 (Conv + activation)", "Conv -2 (absorbed or removed)",
                     "Relu -2 (absorbed or removed)"]


def test_compile_cli(tmp_path):
    _, m = conv_bn_relu()
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "compile", str(src), "-o", str(tmp_path / "o.onnx"),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["batchnorm_folded_here"] == 1 and d["batchnorm"]["folded"]
    assert d["nodes_after"] < d["nodes_before"]
