"""Early-exit dynamic pruning: heads train, the cascade's table is measured and self-consistent."""

from __future__ import annotations

import json

import pytest
import torch

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import count_macs
from edgeslim.passes import PASSES, RunContext
from edgeslim.prune.exits import build_exits, chain
from edgeslim.train import TrainConfig, evaluate, train_model


def _trained(arch, task, **kw):
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **kw)
    torch.manual_seed(0)  # the initial weights: whatever ran before in this worker
    m = models.build_model(spec)
    train_model(m, task, TrainConfig(epochs=8), quiet=True)
    return m, spec


def test_early_exit_table_on_resnet8(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _trained("resnet8", task, width=8)
    full_acc = evaluate(m, task.x_test, task.y_test)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ctx = RunContext(stage_dir=tmp_path, spec=spec, finetune=TrainConfig(epochs=0), quiet=True)
    cfg = PASSES["early_exit"].config(thresholds=[0.0, 0.9, 1.0], head_epochs=100)
    res = PASSES["early_exit"].fn(m, task, cfg, ctx)
    assert res.model is m and res.notes["exits"] == ["layer1", "layer2"]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())  # backbone untouched, BN stats too
    table = json.loads((tmp_path / "early_exit.json").read_text())
    rows = {r["threshold"]: r for r in table["rows"]}
    full_macs = count_macs(m, task.input_shape)
    assert table["full_macs"] == full_macs and table["test_inputs"] == len(task.x_test)
    assert rows["full"]["accuracy"] == pytest.approx(full_acc)
    assert rows[0.0]["exit_fractions"] == [1.0, 0.0, 0.0]  # everything leaves at the first head
    assert rows[0.0]["macs_fraction"] < 0.5
    assert rows[1.0]["exit_fractions"][-1] == pytest.approx(1.0, abs=0.02)
    assert rows[1.0]["macs_per_input"] > full_macs  # all heads run and none exits: more work than full
    assert rows[0.0]["macs_per_input"] < rows[0.9]["macs_per_input"] <= rows[1.0]["macs_per_input"]
    for r in table["rows"]:
        assert sum(r["exit_fractions"]) == pytest.approx(1.0, abs=1e-3)
        assert r["latency_ms_mean"] > 0 and 0 <= r["accuracy"] <= 1
    assert rows[0.0]["accuracy"] > 0.5  # the first head learned something (4 classes)
    assert "| full model |" in (tmp_path / "early_exit.md").read_text()
    # the threshold is picked on validation: the cheapest (val MACs) within 1 point of the full model's val accuracy
    from edgeslim.passes.early_exit import pick_threshold

    assert table["val_inputs"] == len(task.x_val) and rows["full"]["val_macs_fraction"] == 1.0
    ok = [r for r in table["rows"][1:] if r["val_accuracy"] >= rows["full"]["val_accuracy"] - 0.01]
    if ok:
        best = min(ok, key=lambda r: r["val_macs_fraction"])
        assert res.notes["cheapest_threshold_within_1pt"] == best["threshold"]
        assert res.notes["best_accuracy"] == best["accuracy"] and res.notes["best_val_accuracy"] == best["val_accuracy"]
    # a table whose test figures favour another threshold: the pick follows validation
    fake = [{"threshold": "full", "val_accuracy": 0.9, "accuracy": 0.9, "val_macs_fraction": 1.0, "macs_fraction": 1.0},
            {"threshold": 0.5, "val_accuracy": 0.7, "accuracy": 0.95, "val_macs_fraction": 0.3, "macs_fraction": 0.3},
            {"threshold": 0.9, "val_accuracy": 0.895, "accuracy": 0.8, "val_macs_fraction": 0.6, "macs_fraction": 0.6}]
    picked = pick_threshold(fake)
    assert picked is not None and picked["threshold"] == 0.9
    assert {p.name for p in (tmp_path / "exits").iterdir()} >= {"segment0.onnx", "head0.onnx", "full.onnx"}


def test_early_exit_on_depthwise_model_and_bad_exit(tiny_image_task):
    task = tiny_image_task
    m, _ = _trained("dscnn", task, width=8)
    ex = build_exits(m, task, exits=["blocks.1.5"], head_epochs=20)
    assert ex["exits"] == ["blocks.1.5"] and len(ex["segments"]) == 2 and len(ex["heads"]) == 1
    assert sum(ex["seg_macs"]) == count_macs(m, task.input_shape)
    with pytest.raises(EdgeslimError, match="unknown exit points"):
        build_exits(m, task, exits=["nope"])
    assert [n for n, _ in chain(m)][:2] == ["stem.0", "stem.1"]


def test_early_exit_rejects_models_that_do_not_chain(tiny_image_task):
    m, _ = _trained("lenet300", tiny_image_task)
    with pytest.raises(EdgeslimError, match="runs its sub-modules in order"):
        build_exits(m, tiny_image_task)
