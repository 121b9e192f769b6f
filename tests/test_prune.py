"""Unstructured pruning, schedules, sparse storage, N:M, regularisers and sensitivity allocation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.formats.sparse import decode_sparse, encode_sparse
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.passes import PASSES, RunContext
from edgeslim.prune.masks import magnitude_masks, prunable, schedule_ratios, weight_sparsity
from edgeslim.prune.nm import is_nm, nm_mask
from edgeslim.prune.regularizers import PENALTIES, small_fraction
from edgeslim.prune.sensitivity import allocate, sensitivity_curves, write_report
from edgeslim.train import TrainConfig, train_model


def _ctx(tmp_path, spec, epochs=2) -> RunContext:
    return RunContext(stage_dir=tmp_path, spec=spec,
                      finetune=TrainConfig(epochs=epochs, lr=3e-3), quiet=True)


def _trained(arch, task, epochs=8, **kw):
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **kw)
    m = models.build_model(spec)
    train_model(m, task, TrainConfig(epochs=epochs), quiet=True)
    return m, spec


def _parity(model, task, path):
    export_onnx(model, task.input_shape, path)
    got = run_batched(session(path), task.x_test)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(task.x_test)).numpy()
    return float(np.abs(got - ref).max())


def test_schedules_reach_target_and_cubic_front_loads():
    assert schedule_ratios(0.9, 5, "oneshot") == [0.9]
    lin, cub = schedule_ratios(0.9, 4, "linear"), schedule_ratios(0.9, 4, "cubic")
    assert lin == pytest.approx([0.225, 0.45, 0.675, 0.9])
    assert cub[-1] == pytest.approx(0.9) and cub[0] == pytest.approx(0.9 * (1 - 0.75**3))
    assert cub[0] > lin[0] and all(b > a for a, b in zip(cub, cub[1:]))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_hit_sparsity(scope):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    masks = magnitude_masks(m, 0.8, scope)
    kept = sum(int(v.sum()) for v in masks.values())
    assert kept == pytest.approx(0.2 * (600 + 150), abs=2)
    if scope == "layer":
        assert int(masks["0"].sum()) == 120 and int(masks["2"].sum()) == 30


def test_scheduled_magnitude_prune_keeps_masks_and_exports(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _trained("lenet300", task)
    cfg = PASSES["magnitude_prune"].config(sparsity=0.9, scope="lamp", schedule="cubic", rounds=3)
    ctx = _ctx(tmp_path, spec)
    res = PASSES["magnitude_prune"].fn(m, task, cfg, ctx)
    rounds = res.notes["rounds"]
    assert [r["target_sparsity"] for r in rounds] == pytest.approx(schedule_ratios(0.9, 3, "cubic"), abs=1e-4)
    for r in rounds:  # masks stayed fixed through each round's fine-tuning
        assert r["sparsity"] >= r["target_sparsity"] - 1e-3
    assert weight_sparsity(res.model) == pytest.approx(0.9, abs=0.01)
    assert res.notes["val_accuracy"] > 0.8
    assert res.carry == {"keep_sparsity": True} and ctx.carry == {}  # carry goes out through the result only
    assert res.store_sparse  # the pipeline stores its one export sparse-encoded
    assert _parity(res.model, task, tmp_path / "m.onnx") < 1e-4
    from edgeslim.formats.sparse import write_sparse_stage

    d = write_sparse_stage(tmp_path / "m.onnx", tmp_path)
    assert (tmp_path / "model.sparse.npz").stat().st_size == d["sparse_file_bytes"]
    assert d["sparse_file_bytes"] < 0.35 * d["dense_onnx_bytes"]


def test_global_magnitude_can_empty_a_layer_lamp_does_not(tiny_image_task):
    m, _ = _trained("lenet300", tiny_image_task)
    glob, lamp = magnitude_masks(m, 0.9, "global"), magnitude_masks(m, 0.9, "lamp")
    assert int(glob["fc2"].sum()) < 0.01 * glob["fc2"].numel()  # fc2's small init weights all fall below
    for masks in (glob, lamp):
        assert sum(int(v.sum()) for v in masks.values()) == pytest.approx(0.1 * 49600, abs=2)
    assert all(int(v.sum()) > 0.05 * v.numel() for v in lamp.values())


def test_sparse_encoding_round_trips_bit_exact(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, _ = _trained("lenet5", task, epochs=1)
    from edgeslim.prune.masks import apply_masks

    apply_masks(m, magnitude_masks(m, 0.85, "global"))
    p = tmp_path / "m.onnx"
    export_onnx(m, task.input_shape, p)
    data = encode_sparse(p)
    back = decode_sparse(data)
    orig = onnx.load(str(p))
    a = {t.name: onnx.numpy_helper.to_array(t) for t in orig.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in back.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    q = tmp_path / "back.onnx"
    onnx.save(back, str(q))
    x = task.x_test[:16]
    assert np.array_equal(run_batched(session(p), x), run_batched(session(q), x))
    assert len(data) < 0.4 * p.stat().st_size


def test_nm_mask_pattern_and_survives_finetuning(tiny_image_task, tmp_path):
    w = torch.arange(16.0).reshape(2, 8) * torch.tensor([1.0, -1.0] * 8).reshape(2, 8)
    mask = nm_mask(w, 2, 4)
    assert mask is not None and mask.reshape(2, 2, 4).sum(2).eq(2).all()
    assert mask[0, :4].tolist() == [False, False, True, True]
    assert nm_mask(torch.ones(3, 6), 2, 4) is None  # 6 is not a multiple of 4: layer stays dense
    task = tiny_image_task
    m, spec = _trained("lenet300", task, epochs=3)
    res = PASSES["nm_prune"].fn(m, task, PASSES["nm_prune"].config(), _ctx(tmp_path, spec, epochs=3))
    ws = dict(prunable(res.model))
    assert res.notes["pattern_holds"] and res.notes["layers_nm"] == ["fc2", "fc3"]
    assert all(is_nm(ws[k], 2, 4) for k in ("fc2", "fc3"))
    assert float((ws["fc2"] == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert not is_nm(ws["fc1"], 2, 4)  # skip_first keeps the first layer dense
    assert _parity(res.model, task, tmp_path / "m.onnx") < 1e-4
    with pytest.raises(ValueError):
        PASSES["nm_prune"].config(n=4, m=4)


@pytest.mark.parametrize("kind", ["l1", "group_lasso", "bn_l1"])
def test_regularisers_shrink_their_target(tiny_image_task, tmp_path, kind):
    task = tiny_image_task
    m, spec = _trained("resnet8", task, epochs=2, width=4)
    pen0 = float(PENALTIES[kind](m).detach())
    strength = {"l1": 1e-2, "group_lasso": 1e-2, "bn_l1": 5e-2}[kind]
    cfg = PASSES["sparsity_train"].config(kind=kind, strength=strength, persist=True,
                                          finetune=TrainConfig(epochs=4, lr=2e-2))
    res = PASSES["sparsity_train"].fn(m, task, cfg, _ctx(tmp_path, spec))
    assert float(PENALTIES[kind](res.model).detach()) < 0.8 * pen0
    assert res.notes["small_fraction_after"] >= res.notes["small_fraction_before"]
    assert small_fraction(res.model, kind) == pytest.approx(res.notes["small_fraction_after"], abs=1e-4)
    assert list(res.carry.values()) == [strength]  # persist: later fine-tunings keep the penalty


def test_bn_l1_without_batchnorm_is_a_user_error(tiny_image_task, tmp_path):
    m, spec = _trained("lenet300", tiny_image_task, epochs=1)
    with pytest.raises(EdgeslimError, match="BatchNorm"):
        PASSES["sparsity_train"].fn(m, tiny_image_task, PASSES["sparsity_train"].config(kind="bn_l1"),
                                    _ctx(tmp_path, spec))


def test_sensitivity_curves_allocation_and_report(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _trained("lenet300", task, epochs=5)
    curves = sensitivity_curves(m, task, [0.3, 0.6, 0.9], "unstructured")
    assert [r["layer"] for r in curves["layers"]] == ["fc1", "fc2", "fc3"]
    for r in curves["layers"]:
        assert set(r["accuracy"]) == {"0.3", "0.6", "0.9"} and all(0 <= a <= 1 for a in r["accuracy"].values())
    alloc = allocate(curves, 0.7)
    size = {r["layer"]: r["weights"] for r in curves["layers"]}
    overall = sum(alloc[k] * size[k] for k in alloc) / sum(size.values())
    assert overall == pytest.approx(0.7, abs=0.01)
    with pytest.raises(EdgeslimError, match="target"):
        allocate(curves, 0.99, max_ratio=0.9)
    files = write_report(tmp_path / "rep", curves, alloc)
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    assert "| fc2 | 30000 |" in files[0].read_text()
    res = PASSES["sensitivity_prune"].fn(
        m, task, PASSES["sensitivity_prune"].config(target=0.7, ratios=[0.3, 0.6, 0.9]), _ctx(tmp_path, spec)
    )
    assert weight_sparsity(res.model) == pytest.approx(0.7, abs=0.02)
    assert (tmp_path / "sensitivity.png").exists()
    assert _parity(res.model, task, tmp_path / "m.onnx") < 1e-4
