"""Numerical faults: a NaN / Inf loss in training, fine-tuning, QAT or distillation rolls back to the last
good weights and optimizer state, halves the learning rate and retries; after three rollbacks it stops
in one line with the last good weights kept."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import assert_one_line_error

from edgeslim import api, models, train
from edgeslim.guard import TrainingDiverged
from edgeslim.train import Hooks, TrainConfig
from edgeslim.train import train_model as fit


def _net(task):  # a small MLP, seed 0
    torch.manual_seed(0)
    return models.build_model(models.make_spec("lenet300", task.input_shape, task.num_classes, h1=32, h2=16))


class NaNAt:
    """An extra loss term that is NaN (or +Inf) at the given global steps and 0 otherwise."""

    def __init__(self, steps: set[int] | range, value: float = math.nan):
        self.steps, self.value, self.calls = steps, value, 0

    def __call__(self, model, x, y, out) -> torch.Tensor:
        self.calls += 1
        bad = (self.calls - 1) in self.steps
        return out.sum() * 0 + (self.value if bad else 0.0)


def test_one_nan_rolls_back_halves_lr_and_finishes(tiny_image_task) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=0)
    clean = _net(tiny_image_task)
    ref = fit(clean, tiny_image_task, cfg, quiet=True)
    net = _net(tiny_image_task)
    steps = math.ceil(len(tiny_image_task.x_train) / cfg.batch_size)
    fault = NaNAt({steps + 3})  # epoch 2, step 4
    hist = fit(net, tiny_image_task, cfg, Hooks(extra_losses=[fault]), quiet=True)
    assert len(hist["rollbacks"]) == 1
    rb = hist["rollbacks"][0]
    assert (rb["epoch"], rb["step"]) == (2, 4) and rb["lr_after"] == pytest.approx(rb["lr_before"] * 0.5)
    assert hist["epochs"] == 3 and all(torch.isfinite(p).all() for p in net.parameters())
    assert hist["val_accuracy"] > 0.8 and ref["val_accuracy"] > 0.8
    # epoch 1 is untouched by the fault: identical to the clean run
    assert hist["history"][0] == ref["history"][0]


def test_inf_loss_is_a_fault_too(tiny_image_task) -> None:
    net = _net(tiny_image_task)
    hist = fit(net, tiny_image_task, TrainConfig(epochs=1, batch_size=32), Hooks(extra_losses=[NaNAt({2}, math.inf)]),
               quiet=True)
    assert len(hist["rollbacks"]) == 1 and all(torch.isfinite(p).all() for p in net.parameters())


def test_persistent_nan_stops_in_one_line_with_the_last_good_weights(tiny_image_task) -> None:
    cfg = TrainConfig(epochs=4, batch_size=32, seed=0, keep_best=False, schedule="none")
    steps = math.ceil(len(tiny_image_task.x_train) / cfg.batch_size)
    after_epoch: dict[int, dict] = {}
    hooks = Hooks(extra_losses=[NaNAt(range(steps, 10**9))],  # every step from epoch 2 on
                  after_epoch=[lambda m, e: after_epoch.__setitem__(e, copy.deepcopy(m.state_dict()))])
    net = _net(tiny_image_task)
    with pytest.raises(TrainingDiverged) as e:
        fit(net, tiny_image_task, cfg, hooks, quiet=True)
    msg = assert_one_line_error(e.value, "diverged", "3 rollbacks", "last good weights (end of epoch 1)")
    assert "0.0015" in msg and "0.00075" in msg and "0.000375" in msg  # 3e-3 halved three times
    assert e.value.good_epoch == 1
    for k, v in net.state_dict().items():  # the model holds the weights at the end of epoch 1
        assert torch.equal(v, after_epoch[0][k]), k


def test_rollback_restores_the_optimizer_state(tiny_image_task, monkeypatch) -> None:
    """After a rollback the epoch is replayed from the saved optimizer state: Adam's step counter
    matches a run that never saw the fault, and the rate is halved."""
    cfg = TrainConfig(epochs=2, batch_size=32, seed=0, schedule="none")
    steps = math.ceil(len(tiny_image_task.x_train) / cfg.batch_size)
    made = []
    real = train._optimizer
    monkeypatch.setattr(train, "_optimizer", lambda model, c: made.append(real(model, c)) or made[-1])
    fit(_net(tiny_image_task), tiny_image_task, cfg, Hooks(extra_losses=[NaNAt({steps + 1})]), quiet=True)
    opt = made[-1]
    assert int(next(iter(opt.state.values()))["step"]) == 2 * steps  # the undone step was not counted
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * 0.5)


def test_train_keeps_the_last_good_model_when_it_gives_up(tiny_image_task, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = train.task_loss

    def nan_after(model, x, y, out):  # finite for 20 steps, then NaN for ever
        calls["n"] += 1
        loss = real(model, x, y, out)
        return loss * math.nan if calls["n"] > 20 else loss

    monkeypatch.setattr(train, "task_loss", nan_after)
    out = tmp_path / "m"
    with pytest.raises(TrainingDiverged) as e:
        api.train("lenet300", tiny_image_task, out, TrainConfig(epochs=5, batch_size=32), quiet=True, h1=32, h2=16)
    assert_one_line_error(e.value, "diverged", f"saved them to {out}")
    net, spec = models.load_model(out)
    assert "diverged" in spec["extra"] and all(torch.isfinite(p).all() for p in net.parameters())


def _nan_once_loss(monkeypatch, module, name: str, at: int) -> dict:
    """Wrap `module.name` (a loss) so that its `at`-th call returns NaN."""
    calls = {"n": 0}
    real = getattr(module, name)

    def wrapped(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * math.nan if calls["n"] == at else loss

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_qat_fine_tuning_recovers_from_a_nan(tiny_image_task, tmp_path: Path, monkeypatch, capsys) -> None:
    """A QAT stage of a real run: its fine-tuning hits one NaN loss, rolls back and the run completes."""
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    base = tmp_path / "base"
    api.train("lenet5", tiny_image_task, base, TrainConfig(epochs=4), quiet=True)
    calls = _nan_once_loss(monkeypatch, train, "task_loss", 5)
    rec = parse_recipe("version: 1\nfinetune: {epochs: 2}\npasses:\n  - qat: {calibration_samples: 32}\n")
    res = run_recipe(rec, base, tiny_image_task, tmp_path / "run")
    assert calls["n"] > 5
    assert "rolled back to the end of epoch 0" in capsys.readouterr().out
    assert res["stages"][-1]["name"] == "qat" and res["stages"][-1]["accuracy"] > 0.5


def test_distillation_recovers_from_a_nan(tiny_image_task, monkeypatch, capsys) -> None:
    from edgeslim.distill import train as distill_mod
    from edgeslim.distill.train import distill_model

    teacher = _net(tiny_image_task)
    fit(teacher, tiny_image_task, TrainConfig(epochs=6), quiet=True)
    real_fn = distill_mod.kd_loss_fn
    calls = {"n": 0}

    def kd_with_fault(*a, **k):
        inner = real_fn(*a, **k)

        def loss(m, x, y, out):
            calls["n"] += 1
            v = inner(m, x, y, out)
            return v * math.nan if calls["n"] == 3 else v

        return loss

    monkeypatch.setattr(distill_mod, "kd_loss_fn", kd_with_fault)
    student = _net(tiny_image_task)
    hist = distill_model(student, [teacher], tiny_image_task, TrainConfig(epochs=20, lr=1e-2), quiet=False)
    assert len(hist["rollbacks"]) == 1 and hist["val_accuracy"] > 0.5
    assert "loss is nan" in capsys.readouterr().out
    assert all(np.isfinite(p.detach().numpy()).all() for p in student.parameters())
