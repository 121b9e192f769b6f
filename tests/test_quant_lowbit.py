"""Low-bit and non-uniform weights (binary, ternary, pow2, k-means), bit packing, mixed precision."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.formats.packed import pack_codes, unpack_codes, write_packed
from edgeslim.onnxkit.session import onnx_accuracy
from edgeslim.passes import PASSES, RunContext
from edgeslim.quant.codebook import make_codec
from edgeslim.quant.mixed import allocate_bits
from edgeslim.train import TrainConfig, evaluate, train_model


@pytest.fixture(scope="module")
def lenet(tiny_image_task):
    torch.manual_seed(0)
    spec = models.make_spec("lenet5", tiny_image_task.input_shape, tiny_image_task.num_classes)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=8, lr=3e-3), quiet=True)
    return m.eval(), spec


def _ctx(stage: Path, spec: dict, epochs: int = 2) -> RunContext:
    stage.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, spec=spec, finetune=TrainConfig(epochs=epochs, lr=1e-3),
                      quiet=True)


@pytest.mark.parametrize("scheme,bits,levels", [("binary", 1, 2), ("ternary", 2, 3), ("pow2", 4, 15),
                                                ("kmeans", 3, 8), ("uniform", 4, 15)])
def test_codecs_use_their_levels(scheme, bits, levels):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    w[0, 0] = 0.0
    codec = make_codec(w, scheme, bits)
    vals, codes, side = codec.dequant(w)
    assert codes.max() < 2**codec.bits and codes.min() >= 0
    assert len(torch.unique(vals)) <= levels * (6 if scheme != "kmeans" else 1)
    for c in range(6):  # per-channel level count
        assert len(torch.unique(vals[c])) <= levels
    if scheme != "binary":
        assert (vals[0, 0] == 0).all()  # zeros (pruned) stay zero
    if scheme == "pow2":
        r = (vals.abs() / side.reshape(-1, 1, 1, 1)).flatten()
        r = r[r > 0].numpy()
        assert np.allclose(np.log2(r), np.round(np.log2(r)))
    err = float(((vals - w) ** 2).mean() / (w**2).mean())
    assert err < {"binary": 0.5, "ternary": 0.35, "pow2": 0.1, "kmeans": 0.08, "uniform": 0.02}[scheme]


def test_pack_roundtrip_and_file_size(tmp_path):
    rng = np.random.default_rng(0)
    for bits in (1, 2, 3, 5):
        codes = rng.integers(0, 2**bits, 1001)
        data = pack_codes(codes, bits)
        assert len(data) == int(np.ceil(1001 * bits / 8))
        assert np.array_equal(unpack_codes(data, bits, 1001), codes)
    w, b = torch.randn(8, 16), torch.randn(8)
    used = write_packed(tmp_path / "w", {"l.weight": w, "l.bias": b}, {"l.weight": make_codec(w, "ternary", 2)})
    assert used["l.weight"] == 128 * 2 // 8 + 8 * 4 and used["l.bias"] == 32
    (n_head,) = struct.unpack("<I", (tmp_path / "w").read_bytes()[:4])
    assert (tmp_path / "w").stat().st_size == 4 + n_head + sum(used.values())


@pytest.mark.parametrize("scheme", ["binary", "ternary"])
def test_lowbit_pass_is_simulated_with_packed_size(lenet, tiny_image_task, tmp_path, scheme):
    model, spec = lenet
    res = PASSES["lowbit"].fn(copy.deepcopy(model), tiny_image_task, PASSES["lowbit"].config(scheme=scheme),
                              _ctx(tmp_path, spec))
    n = res.notes
    assert n["simulated"] and "simulated" in n["note"] and res.artifact is not None
    fp32_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert res.artifact.stat().st_size < fp32_bytes / 6
    inner = [r for r in n["layers"] if r["layer"] not in n["kept_8bit"]]
    assert inner and all(r["bits"] == (1 if scheme == "binary" else 2) for r in inner)
    w = res.model.features[4].weight  # second conv: quantized values baked into the float model
    assert max(len(torch.unique(w[c])) for c in range(w.shape[0])) <= (2 if scheme == "binary" else 3)
    assert n["val_accuracy"] >= n["val_accuracy_before_finetune"]
    assert evaluate(res.model, tiny_image_task.x_val, tiny_image_task.y_val) == pytest.approx(n["val_accuracy"])
    export_onnx(res.model, tiny_image_task.input_shape, tmp_path / "m.onnx", check=tiny_image_task.x_test)
    assert onnx_accuracy(tmp_path / "m.onnx", tiny_image_task.x_val, tiny_image_task.y_val) == pytest.approx(
        n["val_accuracy"])  # the simulated model runs in ONNX Runtime with the same accuracy


def test_allocate_meets_budget_and_spares_sensitive_layers():
    sens = {"a": {2: 1.0, 4: 0.1, 8: 0.0}, "b": {2: 0.01, 4: 0.001, 8: 0.0}}
    cost = {"a": 100, "b": 100}
    bits = allocate_bits(sens, cost, [2, 4, 8], 100 * 8 + 100 * 2)
    assert bits == {"a": 8, "b": 2}
    with pytest.raises(EdgeslimError, match="cannot be met"):
        allocate_bits(sens, cost, [2, 4, 8], 100)


def test_mixed_precision_pass(lenet, tiny_image_task, tmp_path):
    model, spec = lenet
    cfg = PASSES["mixed_precision"].config(budget_fraction=0.15, sensitivity_samples=32)
    res = PASSES["mixed_precision"].fn(copy.deepcopy(model), tiny_image_task, cfg, _ctx(tmp_path, spec, 1))
    b = res.notes["budget"]
    assert b["used"] <= b["limit"] and set(res.notes["bits"].values()) <= {2, 4, 8}
    assert res.notes["avg_weight_bits"] <= 0.15 * 32 + 1e-6
    cfg2 = PASSES["mixed_precision"].config(budget="bitops", budget_fraction=0.1, sensitivity_samples=32)
    res2 = PASSES["mixed_precision"].fn(copy.deepcopy(model), tiny_image_task, cfg2, _ctx(tmp_path / "e", spec, 0))
    assert res2.notes["budget"]["used"] <= res2.notes["budget"]["limit"]
    assert "estimated" in res2.notes["budget"]["unit"]
