"""Quantization-aware training: BN folding, fake quant with STE/LSQ, QDQ export that matches PyTorch,
pruning masks kept through QAT, and the shipped qat-int4 recipe end to end."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import trained
from onnx import numpy_helper

from edgeslim import models
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.passes import PASSES, RunContext
from edgeslim.passes.qat import QAT
from edgeslim.pipeline import run_recipe
from edgeslim.prune.masks import apply_masks, magnitude_masks
from edgeslim.quant import fakequant as fq
from edgeslim.quant.qat import export_qdq, prepare_qat
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, train_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet(tiny_image_task):
    torch.manual_seed(0)
    spec = models.make_spec("resnet8", tiny_image_task.input_shape, tiny_image_task.num_classes, width=8)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=10, lr=3e-3), quiet=True)
    return m.eval(), spec


def _ctx(stage: Path, spec: dict, epochs: int = 2, carry: dict | None = None) -> RunContext:
    stage.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, spec=spec, finetune=TrainConfig(epochs=epochs, lr=5e-4),
                      carry=dict(carry or {}), quiet=True)


def test_fold_bn_keeps_outputs(resnet, tiny_image_task):
    m = copy.deepcopy(resnet[0])
    x = torch.from_numpy(tiny_image_task.x_test[:32])
    with torch.no_grad():
        ref = m(x)
        pairs = fq.fold_bn(m, x[:2])
        got = m(x)
    assert len(pairs) == 7  # stem + 2 per block; shortcuts have no BN
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(ref, got, atol=1e-4)


@pytest.mark.parametrize("bits,lsq", [(8, False), (4, True)])
def test_qdq_export_matches_fake_quant_model(resnet, tiny_image_task, tmp_path, bits, lsq):
    model, spec = resnet
    qm, ref, _ = prepare_qat(model, tiny_image_task.calibration(64), weight_bits=bits, lsq=lsq)
    scales0 = [p.detach().clone() for n, p in qm.named_parameters() if n.endswith("scale")]
    _ctx(tmp_path, spec, epochs=1).finetune_model(qm, tiny_image_task)
    if lsq:  # learned step sizes moved
        scales1 = [p.detach() for n, p in qm.named_parameters() if n.endswith("scale")]
        assert len(scales0) == 18  # 10 weight + 8 activation scales (shortcut convs share their input's)
        assert any(not torch.equal(a, b) for a, b in zip(scales0, scales1))
    out = export_qdq(qm, ref, tiny_image_task, tmp_path, bits)
    x = tiny_image_task.x_test
    with torch.no_grad():
        want = qm.eval()(torch.from_numpy(x)).numpy()
    got = run_batched(session(out.onnx), x)  # loads and runs in ONNX Runtime
    assert np.abs(want - got).max() <= 0.05 * np.abs(want).max()
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.97
    g = onnx.load(str(out.onnx)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") == 8 and out.notes["qdq_layers"] == 10  # shortcuts share Q and not out.notes["left_float"]
    codes = [numpy_helper.to_array(t) for t in g.initializer if t.data_type == onnx.TensorProto.INT8]
    q = 2 ** (bits - 1) - 1
    assert len(codes) >= 10 and all(c.min() >= -q and c.max() <= q for c in codes if c.ndim > 1)
    assert all(r["bits"] == bits and r["sqnr_db"] is not None for r in out.notes["layers"])


def test_qat_recovers_ptq_gap_at_low_bits(resnet, tiny_image_task, tmp_path):
    model, spec = resnet
    res = PASSES["qat"].fn(copy.deepcopy(model), tiny_image_task, QAT(weight_bits=3),
                           _ctx(tmp_path, spec, epochs=3))
    n = res.notes
    assert n["val_accuracy"] >= n["ptq_val_accuracy"]
    gap = n["float_val_accuracy"] - n["ptq_val_accuracy"]
    assert n["float_val_accuracy"] - n["val_accuracy"] <= max(gap / 2, 0.02)
    assert n["parity_top1_agreement"] >= 0.97 and res.model is None and res.onnx.exists()


def test_qat_after_pruning_keeps_masks(resnet, tiny_image_task, tmp_path):
    model, spec = copy.deepcopy(resnet[0]), resnet[1]
    apply_masks(model, magnitude_masks(model, 0.5, "global"))
    res = PASSES["qat"].fn(model, tiny_image_task, QAT(weight_bits=8),
                           _ctx(tmp_path, spec, epochs=2, carry={"keep_sparsity": True}))
    g = onnx.load(str(res.onnx)).graph
    w = [numpy_helper.to_array(t) for t in g.initializer
         if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    zeros = sum(int((a == 0).sum()) for a in w) / sum(a.size for a in w)
    assert zeros >= 0.49  # the 50% pruned weights are still exactly zero after QAT (plus rounding zeros)


def test_shipped_qat_recipe_runs(tiny_seq_task, tmp_path):
    trained("cnn1d", tiny_seq_task, 4, tmp_path / "m", width=16)
    res = run_recipe(load_recipe(ROOT / "recipes" / "qat-int4.yaml"), tmp_path / "m", tiny_seq_task,
                     tmp_path / "run", quiet=True)
    base, q = res["stages"]
    assert q["name"] == "qat" and q["accuracy"] >= base["accuracy"] - 0.1
    assert q["notes"]["bn_folded"] == 3
    session(tmp_path / "run" / q["onnx"])


def test_qat_export_via_ort_is_fused_and_keeps_exact_model(resnet, tiny_image_task, tmp_path):
    model, spec = resnet
    res = PASSES["qat"].fn(copy.deepcopy(model), tiny_image_task, QAT(weight_bits=8, export="ort"),
                           _ctx(tmp_path, spec, epochs=1))
    n = res.notes
    assert n["ort_format"].startswith("QDQ ") and n["tried"] and n["parity_top1_agreement"] >= 0.95
    assert n["learned_act_scales"] == 8  # every conv/fc input tensor keeps its QAT scale
    assert (tmp_path / "model_exact.onnx").exists()
    session(tmp_path / "model_exact.onnx")
    assert run_batched(session(res.onnx), tiny_image_task.x_test).shape == (len(tiny_image_task.x_test), 4)
