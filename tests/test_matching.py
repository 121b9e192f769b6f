"""Function matching (`distill.matching`) and the fidelity budget of structured `sensitivity_prune`: the student
fits the teacher on augmented views within a step and time budget, features are matched only where shapes were
kept, and a try under the validation budget backs the ratios off."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.data.unlabelled import teacher_task
from edgeslim.distill.matching import Matching, augment_batch, match, matched_layers
from edgeslim.passes import PASSES
from edgeslim.passes.base import RunContext
from edgeslim.prune.structured import make_pruner
from edgeslim.train import TrainConfig, teacher_score


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.c1(x)))
        y = torch.relu(self.bn2(self.c2(y)))
        return self.fc(torch.relu(self.c3(y)).mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = Net().eval()
    x = np.random.default_rng(0).normal(size=(120, 1, 8, 8)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(a)).numpy()

    return teacher, teacher_task("x", x, run, seed=0)


def _pruned(teacher: nn.Module, task, ratio: float = 0.75) -> nn.Module:
    s = copy.deepcopy(teacher)
    make_pruner(s, task.input_shape, ratio=0.0, layer_ratios={"c1": ratio})[0].step()
    return s


def test_augment_batch_is_seeded_keeps_shape_and_changes_values():
    x = torch.randn(8, 1, 16, 16)
    cfg = Matching()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1), 1.0)
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1), 1.0)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    ids = torch.arange(4).reshape(4, 1)
    assert torch.equal(augment_batch(ids, cfg, torch.Generator(), 1.0), ids)  # integer inputs untouched


def test_matched_layers_skip_pruned_shapes(setup):
    teacher, task = setup
    student = _pruned(teacher, task)
    assert student.c1.out_channels == 4 and student.c2.out_channels == 16
    names = matched_layers(student, teacher, task.input_shape, 4)
    assert names and not {"c1", "bn1"} & set(names)  # c1's channels were pruned: not comparable
    assert set(names) <= {"c2", "bn2", "c3"} and "fc" not in names  # the output layer is the output term


def test_match_recovers_fidelity_within_budget(setup):
    teacher, task = setup
    student = _pruned(teacher, task)
    before = teacher_score(student, task.x_val, task.y_val)
    rec = match(student, teacher, task, Matching(max_steps=120, eval_every=40, lr=3e-3), quiet=True)
    assert rec["steps"] == 120 and rec["stopped_by"] == "steps" and rec["val_score_before"] == pytest.approx(
        before.judged)
    after = teacher_score(student, task.x_val, task.y_val)
    assert 1 - after.smooth < 0.5 * (1 - before.smooth) and rec["val_score"] == pytest.approx(after.judged)
    assert rec["feature_layers"] and "mixup" in rec["augmentation"]
    quick = match(_pruned(teacher, task), teacher, task, Matching(max_steps=10_000, max_seconds=0.3), quiet=True)
    assert quick["stopped_by"] == "time" and quick["steps"] < 10_000 and quick["seconds"] < 5


def test_the_best_step_is_picked_by_cosine_and_recorded_with_its_score(setup):
    """Top-1 agreement moves in steps of 1/N: the best of many steps by it is a lucky draw. The step is picked by
    the worst output's cosine (`Score.pick`) and recorded with the score, top-1 agreement counted as its lower
    Wilson bound (`Score.judged`)."""
    from edgeslim.onnxkit.scoring import OutputPart, score_rows, wilson_low

    ref = np.array([[2.0, 1.9], [3.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    got = ref.copy()
    got[0] = [1.9, 2.0]  # one flipped decision of four, the values barely moved
    sc = score_rows(got, ref, [OutputPart("logits", (1, 2))])
    assert sc.score == pytest.approx(0.75) and sc.pick > 0.99 and sc.pick == sc.smooth
    assert sc.judged == pytest.approx(wilson_low(0.75, 4)) and sc.judged < sc.score  # 4 rows: a wide margin
    assert wilson_low(1.0, 103) > 0.99 > wilson_low(102 / 103, 103) > 0.97  # 0 flips in 103 meet 0.99; 1 does not
    teacher, task = setup
    student = _pruned(teacher, task)
    rec = match(student, teacher, task, Matching(max_steps=100, eval_every=20, lr=3e-3), quiet=True)
    h = rec["history"]
    assert h and all("val_pick" in r and "val" in r for r in h)
    top = max(h, key=lambda r: r["val_pick"])
    assert rec["best_step"] == top["step"] and rec["val_score"] == top["val"]
    assert rec["val_score"] == pytest.approx(teacher_score(student, task.x_val, task.y_val).judged)
    assert "Wilson" in rec["val_split"]


def _ctx(tmp_path, teacher) -> RunContext:
    return RunContext(stage_dir=tmp_path, spec={}, finetune=TrainConfig(epochs=1), quiet=True,
                      teacher_loader=lambda: copy.deepcopy(teacher))


def test_budget_backs_off_until_met_or_keeps_the_best_try(setup, tmp_path):
    teacher, task = setup
    fast = {"max_steps": 30, "eval_every": 15, "lr": 3e-3}
    base = dict(target=0.5, mode="structured", ratios=[0.25, 0.5, 0.75], max_ratio=0.75, curve_samples=8,
                matching=fast, max_tries=3, backoff=0.5)
    cfg = PASSES["sensitivity_prune"].config(**base, min_val_score=1.0)  # never met: three tries, best kept
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, _ctx(tmp_path, teacher))
    tries = res.notes["tries"]
    assert [t["scale"] for t in tries] == [1.0, 0.5, 0.25] and res.notes["budget_met"] is False
    assert tries[0]["macs_after"] < tries[1]["macs_after"] < tries[2]["macs_after"]
    best = max(tries, key=lambda t: t["val_score"])
    assert res.notes["chosen_try"] == best["try"] and res.notes["val_accuracy"] == best["val_score"]
    assert teacher_score(res.model, task.x_val, task.y_val).judged == pytest.approx(best["val_score"])
    assert res.notes["curve_samples"] == 8
    cfg = PASSES["sensitivity_prune"].config(**base, min_val_score=0.1)  # met at once: one try, full ratios
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, _ctx(tmp_path / "b", teacher))
    assert len(res.notes["tries"]) == 1 and res.notes["budget_met"] and res.notes["ratio_scale"] == 1.0


def test_frozen_batchnorm_keeps_an_unpruned_copy_exact(setup):
    teacher, task = setup
    odd = copy.deepcopy(teacher)
    with torch.no_grad():  # running statistics from other data than the user's inputs (a third-party model)
        odd.bn1.running_mean.fill_(2.0)
        odd.bn1.running_var.fill_(9.0)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return odd(torch.from_numpy(a)).numpy()

    task = teacher_task("odd", np.concatenate([task.x_train[:80], task.x_val, task.x_test]), run, seed=0)
    cfg = Matching(max_steps=10, eval_every=10, lr=1e-3)
    exact = match(copy.deepcopy(odd), odd, task, cfg, quiet=True)
    assert exact["steps"] == 0 and exact["stopped_by"] == "nothing to recover" and exact["val_score"] > 0.9999
    near = copy.deepcopy(odd)
    with torch.no_grad():
        near.c3.weight.mul_(0.9)  # a little off the teacher: something to recover
    before = teacher_score(near, task.x_val, task.y_val).pick  # "val_pick": the cosine the step is picked by
    frozen = match(copy.deepcopy(near), odd, task, cfg, quiet=True)
    trained = match(copy.deepcopy(near), odd, task, cfg.model_copy(update={"bn": "train"}), quiet=True)
    assert frozen["history"][-1]["val_pick"] > before  # running statistics kept: training repairs
    assert trained["history"][-1]["val_pick"] < frozen["history"][-1]["val_pick"] - 1e-3  # batch statistics: breaks


def test_unmet_budget_can_keep_the_unpruned_model(setup, tmp_path):
    teacher, task = setup
    cfg = PASSES["sensitivity_prune"].config(target=0.5, mode="structured", ratios=[0.25, 0.5], max_ratio=0.5,
                                             curve_samples=8, matching={"max_steps": 5, "eval_every": 5},
                                             max_tries=2, min_val_score=1.0, when_unmet="unpruned")
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, _ctx(tmp_path, teacher))
    assert len(res.notes["tries"]) == 2 and res.notes["chosen_try"] == 0 and not res.notes["budget_met"]
    assert res.model.c1.out_channels == 16 and res.notes["val_accuracy"] == pytest.approx(1.0, abs=1e-6)


class TwoHeads(nn.Module):
    """Two head convs whose channels are outputs, concatenated (a detector's shape); `b` runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.body(x))
        return torch.cat([self.a(y).flatten(1), self.b(y).flatten(1)], 1)


def test_layers_whose_channels_are_outputs_score_zero_and_are_not_pruned(tmp_path):
    torch.manual_seed(0)
    teacher = TwoHeads().eval()
    x = np.random.default_rng(1).normal(size=(60, 1, 6, 6)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(a)).numpy()

    task = teacher_task("heads", x, run, seed=0)
    cfg = PASSES["sensitivity_prune"].config(target=0.2, mode="structured", ratios=[0.25, 0.5], max_ratio=0.5,
                                             matching={"max_steps": 5, "eval_every": 5})
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, _ctx(tmp_path, teacher))
    assert res.notes["allocation"].get("a", 0) == 0 and res.model.a.out_channels == 4  # an output: kept whole
    assert res.model.body.out_channels < 8
