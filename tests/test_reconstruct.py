"""Least-squares reconstruction after structured pruning (`prune.reconstruct`): kept channels are recorded while
Torch-Pruning prunes, the refit lowers the output error to the original without labels or gradient steps, and
`sensitivity_prune: {reconstruct: ...}` records it per try."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.data.unlabelled import teacher_task
from edgeslim.passes import PASSES
from edgeslim.passes.base import RunContext
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct
from edgeslim.prune.structured import make_pruner
from edgeslim.train import TrainConfig, evaluate


class Net(nn.Module):
    """conv -> conv (reflect padding) -> residual 1x1 pair -> Conv1d over rows -> Linear: every layer kind the
    refit handles, and a depthwise conv it leaves alone."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 24, 3, padding=1, padding_mode="reflect")
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.p1, self.p2 = nn.Conv2d(24, 24, 1), nn.Conv2d(24, 24, 1)
        self.t = nn.Conv1d(24, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.dw(torch.relu(self.c2(y))))
        y = y + self.p2(torch.relu(self.p1(y)))
        z = torch.relu(self.t(y.mean(2)))  # [B, C, W]
        return self.fc(z.mean(2))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = Net().eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 2, 8, 12)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(a)).numpy()

    return teacher, teacher_task("x", x, run, seed=0)


def _err(student: nn.Module, teacher: nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        a, b = student(torch.from_numpy(x)), teacher(torch.from_numpy(x))
    return float(((a - b) ** 2).mean() / (b ** 2).mean())


def test_kept_indices_are_the_original_channels(setup):
    teacher, task = setup
    s = copy.deepcopy(teacher)
    pruner, _ = make_pruner(s, task.input_shape, ratio=0.5)
    kept = prune_recording(pruner, s)
    assert s.c1.out_channels == 12 and len(kept["c1"]["out"]) == 12 and len(kept["c2"]["in"]) == 12
    k_out, k_in = kept["c2"]["out"], kept["c2"]["in"]
    assert torch.equal(s.c2.weight, teacher.c2.weight[k_out][:, k_in])  # the pruned weights are the kept ones
    assert "out" not in kept["fc"] and s.fc.out_features == 5  # the output layer keeps its outputs
    assert torch.equal(s.fc.weight, teacher.fc.weight[:, kept["fc"]["in"]])


def test_refit_lowers_the_error_to_the_original_without_labels(setup):
    teacher, task = setup
    s = copy.deepcopy(teacher)
    pruner, _ = make_pruner(s, task.input_shape, ratio=0.5)
    kept = prune_recording(pruner, s)
    before = _err(s, teacher, task.x_val)
    dw = s.dw.weight.detach().clone()
    rec = reconstruct(s, teacher, kept, task.x_train, Reconstruct(samples=48, rows_per_call=128))
    after = _err(s, teacher, task.x_val)  # validation samples: not used by the fit
    assert rec["layers"] == 5 and rec["refitted"] and set(rec["refitted"]) <= {"c2", "p1", "p2", "t", "fc"}
    assert "c1" not in rec["refitted"]  # its inputs were not pruned: exact already
    assert torch.equal(s.dw.weight, dw)  # depthwise: left alone
    assert rec["rel_error_after"] < rec["rel_error_before"]
    assert after < 0.6 * before, (before, after)
    again = copy.deepcopy(teacher)
    pruner, _ = make_pruner(again, task.input_shape, ratio=0.5)
    k2 = prune_recording(pruner, again)
    r2 = reconstruct(again, teacher, k2, task.x_train, Reconstruct(samples=48, rows_per_call=128))
    assert r2["refitted"] == rec["refitted"] and torch.equal(again.t.weight, s.t.weight)  # seeded: same fit
    none = reconstruct(copy.deepcopy(teacher), teacher, {}, task.x_train[:8])
    assert none["layers"] == 0 and none["refitted"] == []


def test_time_budget_stops_between_layers(setup):
    teacher, task = setup
    s = copy.deepcopy(teacher)
    pruner, _ = make_pruner(s, task.input_shape, ratio=0.5)
    kept = prune_recording(pruner, s)
    rec = reconstruct(s, teacher, kept, task.x_train, Reconstruct(samples=16, max_seconds=1e-9))
    assert rec["stopped_by_time"] and rec["refitted"] == []


def test_sensitivity_prune_reconstructs_each_try(setup, tmp_path):
    teacher, task = setup
    base = dict(target=0.5, mode="structured", ratios=[0.25, 0.5], max_ratio=0.75, curve_samples=8)
    ctx = RunContext(stage_dir=tmp_path, spec={}, finetune=TrainConfig(epochs=0), quiet=True,
                     teacher_loader=lambda: copy.deepcopy(teacher))
    plain = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, PASSES["sensitivity_prune"].config(**base), ctx)
    cfg = PASSES["sensitivity_prune"].config(**base, reconstruct={"samples": 48, "rows_per_call": 128})
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, ctx)
    row = res.notes["tries"][0]
    assert row["reconstruction"]["refitted"] >= 1 and row["reconstruction"]["samples"] == 48
    assert row["macs_after"] == plain.notes["tries"][0]["macs_after"]  # same channels pruned
    assert evaluate(res.model, task.x_val, task.y_val) > evaluate(plain.model, task.x_val, task.y_val)


def test_structured_prune_reconstructs_each_round(setup, tmp_path):
    teacher, task = setup
    ctx = RunContext(stage_dir=tmp_path, spec={}, finetune=TrainConfig(epochs=0), quiet=True)
    cfg = PASSES["structured_prune"].config(ratio=0.5, reconstruct={"samples": 48, "rows_per_call": 128})
    res = PASSES["structured_prune"].fn(copy.deepcopy(teacher), task, cfg, ctx)
    rnd = res.notes["rounds"][0]
    assert rnd["reconstruction"]["refitted"] >= 1
    assert rnd["reconstruction"]["val_accuracy"] > rnd["val_accuracy_pruned"]  # mean cosine to the original


def test_a_ratio_under_one_channel_removes_none(setup):
    teacher, task = setup
    s = copy.deepcopy(teacher)
    make_pruner(s, task.input_shape, ratio=0.0, layer_ratios={"c1": 0.01, "c2": 0.1})[0].step()
    # 0.01 x 24 < 1: c1 kept whole; 0.1 x 24 = 2.4: Torch-Pruning keeps int(24 x 0.9) = 21
    assert s.c1.out_channels == 24 and s.c2.out_channels == 21
