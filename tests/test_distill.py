"""Distillation: each loss, the student builder, teacher caching, and a distill-prune-quantize recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import trained
from torch import nn

from edgeslim import models
from edgeslim.distill.kd import (
    Teachers,
    feature_kd_loss,
    kd_loss,
    logit_kd_loss,
    make_adapter,
    self_distill_loss,
    soft_targets,
)
from edgeslim.distill.train import KDSettings, distill_model
from edgeslim.errors import EdgeslimError
from edgeslim.models.student import build_student, student_spec
from edgeslim.passes.distill import Distill, kd_settings
from edgeslim.train import TrainConfig, evaluate

# ------------------------------------------------------------------------------------------ losses


def test_kd_loss_is_tempered_kl_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    T = 3.0
    p = F.softmax(t / T, 1)
    want = F.kl_div(F.log_softmax(s / T, 1), p, reduction="batchmean") * T * T
    assert torch.allclose(kd_loss(s, soft_targets([t], T), T), want, atol=1e-6)
    assert kd_loss(t, soft_targets([t], T), T).abs() < 1e-6  # matching the teacher costs nothing


def test_logit_kd_weighted_sum_of_distillation_and_task_loss():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    T, a = 2.0, 0.7
    want = a * kd_loss(s, soft_targets([t], T), T) + (1 - a) * F.cross_entropy(s, y)
    assert torch.allclose(logit_kd_loss(s, t, y, T, a), want)
    assert torch.allclose(logit_kd_loss(s, t, y, T, 0.0), F.cross_entropy(s, y))


def test_multi_teacher_soft_targets_are_weighted_average():
    t1, t2 = torch.randn(3, 4), torch.randn(3, 4)
    T = 2.0
    avg = soft_targets([t1, t2], T, [3, 1])
    assert torch.allclose(avg, 0.75 * F.softmax(t1 / T, 1) + 0.25 * F.softmax(t2 / T, 1))
    assert torch.allclose(avg.sum(1), torch.ones(3))
    assert torch.allclose(soft_targets([t1, t2], T), soft_targets([t1, t2], T, [1, 1]))
    with pytest.raises(ValueError):
        soft_targets([t1, t2], T, [1.0])
    y = torch.tensor([0, 1, 2])
    s = torch.randn(3, 4, requires_grad=True)
    logit_kd_loss(s, [t1, t2], y, T, 0.5, [3, 1]).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_feature_kd_with_adapters_and_pooling():
    s, t = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 12, 12)
    ad = make_adapter(s.shape, t.shape)
    assert isinstance(ad, nn.Conv2d) and ad.kernel_size == (1, 1) and ad.out_channels == 8
    loss = feature_kd_loss([s], [t], [ad])
    assert torch.allclose(loss, F.mse_loss(ad(s), F.adaptive_avg_pool2d(t, (6, 6))))
    assert isinstance(make_adapter((2, 5), (2, 7)), nn.Linear)
    assert isinstance(make_adapter((2, 5, 9), (2, 7, 9)), nn.Conv1d)
    assert isinstance(make_adapter((2, 7, 9), (2, 7, 9)), nn.Identity)
    x = torch.randn(3, 7)
    assert feature_kd_loss([x], [x], [nn.Identity()]) == 0


def test_self_distillation_deeper_teaches_shallower():
    torch.manual_seed(2)
    final, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    e1 = torch.randn(4, 3, requires_grad=True)
    loss = self_distill_loss([e1], final, y, 2.0, 0.5)
    want = 0.5 * kd_loss(e1, soft_targets([final], 2.0), 2.0) + 0.5 * F.cross_entropy(e1, y)
    assert torch.allclose(loss, want)
    f = final.clone().requires_grad_(True)
    self_distill_loss([e1], f, y).backward()
    assert f.grad is None  # the deepest output is the teacher: no gradient flows into it from the exits


def test_teacher_cache_runs_teacher_once_per_sample():
    calls = []

    class T(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.flatten(1)[:, :3] * 2

    tc = Teachers([T()], cache=True)
    x = torch.randn(10, 1, 4)
    a, _ = tc(x[:5])
    b, _ = tc(x[:5])
    assert torch.equal(a[0], b[0]) and calls == [5] and tc.hits == 5
    c, _ = tc(x[[4, 2, 0]])
    assert torch.equal(c[0], a[0][[4, 2, 0]]) and calls == [5]


# ------------------------------------------------------------------------------------------ student builder


def test_student_builder_width_and_depth():
    spec = models.make_spec("lenet300", (1, 8, 8), 10)
    s = student_spec(spec, 0.5)
    assert s["kwargs"] == {"h1": 150, "h2": 50}
    net = models.build_model(s)
    assert net.fc1.out_features == 150 and net.fc2.out_features == 50 and net.fc3.out_features == 10

    r = models.make_spec("resnet8", (1, 8, 8), 10, width=16)
    rs = student_spec(r, 0.5, depth=0.67)
    assert rs["kwargs"]["width"] == 8
    assert rs["edits"] == [{"edit": "identity", "module": "layer1"}]  # the only shape-keeping block
    net = models.build_model(rs)
    assert isinstance(net.layer1, nn.Identity)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    d = models.make_spec("dscnn", (1, 16, 10), 12, width=32)
    ds = student_spec(d, 0.5, depth=0.5)
    assert [e["module"] for e in ds["edits"]] == ["blocks.3", "blocks.2"]
    m = models.build_model(ds)
    assert m(torch.zeros(1, 1, 16, 10)).shape == (1, 12)
    mb = student_spec(models.make_spec("mobilenetv1", (3, 32, 32), 2), 0.5)
    assert mb["kwargs"]["alpha"] == pytest.approx(0.125)
    assert student_spec(spec, 0.5, overrides={"h1": 40})["kwargs"] == {"h1": 40, "h2": 50}


def test_student_builder_errors():
    with pytest.raises(EdgeslimError, match="no width setting"):
        student_spec(models.make_spec("lenet5", (1, 8, 8), 10), 0.5)
    with pytest.raises(EdgeslimError, match="no removable blocks"):
        student_spec(models.make_spec("lenet300", (1, 8, 8), 10), 0.5, depth=0.5)
    with pytest.raises(EdgeslimError, match="zoo model"):
        student_spec({"arch": "pickle"}, 0.5)


def test_student_round_trips_through_spec(tmp_path):
    spec = models.make_spec("dscnn", (1, 16, 10), 12, width=16)
    net, s = build_student(spec, 0.5, 0.5)
    models.save_model(tmp_path, net, s)
    back, _ = models.load_model(tmp_path)
    x = torch.randn(2, 1, 16, 10)
    assert torch.allclose(back(x), net.eval()(x))


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def teacher(tiny_image_task):
    return trained("lenet300", tiny_image_task, 5, h1=32, h2=16)


def test_distill_model_all_terms(teacher, tiny_image_task):
    t_net, spec = teacher
    torch.manual_seed(0)
    s, _ = build_student(spec, 0.5)
    n_params = sum(p.numel() for p in s.parameters())
    cfg = Distill(features=[("fc1", "fc1")], self_distill=["relu1"],  # widths 16 vs 32: a linear adapter
                  train=TrainConfig(epochs=6), temperature=2.0, alpha=0.7)
    hist = distill_model(s, [t_net, t_net], tiny_image_task, cfg.train, kd_settings(cfg), quiet=True)
    assert hist["teacher_cache_hits"] > 0
    assert sum(p.numel() for p in s.parameters()) == n_params  # adapters and exits are gone
    assert not hasattr(s, "_kd_aux")
    assert evaluate(s, tiny_image_task.x_test, tiny_image_task.y_test) > 0.5


def test_distill_config_validation():
    with pytest.raises(ValueError):
        Distill(teachers=["a"], teacher_weights=[1.0])
    Distill(teachers=["a"], teacher_weights=[1.0, 2.0])


def test_distill_prune_quantize_recipe_end_to_end(tmp_path, tiny_image_task):
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    trained("lenet300", tiny_image_task, 5, tmp_path / "base", h1=32, h2=16)
    recipe = parse_recipe("""
version: 1
finetune: {epochs: 2, lr: 0.001}
passes:
  - distill: {width: 0.5, temperature: 3.0, alpha: 0.8, train: {epochs: 6}}
  - magnitude_prune: {sparsity: 0.5}
  - quantize_int8: {calibration_samples: 32}
""")
    seen = []
    from edgeslim.passes import base

    orig = base.FINETUNE_HOOKS["distill"]

    def spy(model, ctx, value):
        seen.append(value)
        return orig(model, ctx, value)

    base.FINETUNE_HOOKS["distill"] = spy
    try:
        res = run_recipe(recipe, tmp_path / "base", tiny_image_task, tmp_path / "run", quiet=True)
    finally:
        base.FINETUNE_HOOKS["distill"] = orig
    names = [s["name"] for s in res["stages"]]
    assert names == ["baseline", "distill", "magnitude_prune", "quantize_int8"]
    assert seen and seen[0]["temperature"] == 3.0  # KD was active while pruning fine-tuned
    st = res["stages"]
    assert st[1]["params"] < st[0]["params"] / 2
    assert st[2]["nonzero_params"] < st[1]["nonzero_params"]
    assert all(s["accuracy"] > 0.6 for s in st)
    spec1 = json.loads((tmp_path / "run" / "stages" / "01_distill" / "spec.json").read_text())
    assert spec1["kwargs"] == {"h1": 16, "h2": 8}
    m, _ = models.load_model(tmp_path / "run" / "stages" / "02_magnitude_prune")
    assert m.fc1.out_features == 16
    assert math.isfinite(st[3]["size_bytes"])


@pytest.mark.parametrize("name", ["distill-prune-quantize.yaml", "deep-compression.yaml"])
def test_shipped_recipes_parse(name):
    from pathlib import Path

    from edgeslim.recipe import load_recipe

    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / name)
    assert r.steps and r.steps[0].name in ("distill", "magnitude_prune")


def test_mixup_transfer_set(teacher, tiny_image_task):
    from edgeslim.distill.kd import Teachers, kd_loss_fn, mix_inputs

    x = torch.arange(12.0).reshape(4, 3)
    xm, perm, lam = mix_inputs(x, torch.Generator().manual_seed(0), 1.0)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    t_net, spec = teacher
    s, _ = build_student(spec, 0.5)
    s.train()
    calls = []
    fn = kd_loss_fn(Teachers([t_net]), 2.0, 0.8, None, mixup=1.0)
    xb = torch.from_numpy(tiny_image_task.x_train[:16])
    yb = torch.from_numpy(tiny_image_task.y_train[:16])
    h = s.register_forward_hook(lambda m, i, o: calls.append(i[0]))
    out = s(xb)
    loss = fn(s, xb, yb, out)
    h.remove()
    assert len(calls) == 2 and not torch.equal(calls[1], xb)  # a second forward on the mixed batch
    loss.backward()
    with pytest.raises(ValueError, match="without mixup"):
        Distill(mixup=1.0, self_distill=["relu1"])
    hist = distill_model(s, [t_net], tiny_image_task, TrainConfig(epochs=2), KDSettings(mixup=0.4), quiet=True)
    assert hist["epochs"] == 2
