"""Training views on crops (`data.crops`) for function matching and reconstruction, and reconstruction in waves:
a convolutional model trains on crops, a model that cannot take them trains on full inputs and says why, and a
wave of layers fitted from one forward still lowers the error."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.data.crops import crop_fails, crop_size, random_crop
from edgeslim.data.unlabelled import teacher_task
from edgeslim.distill.matching import Matching, match
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct
from edgeslim.prune.structured import make_pruner


class FullyConv(nn.Module):
    """Takes any H, W (a detector's shape: a dense map out)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class Flat(nn.Module):
    """A Linear on the flattened maps: takes only its training size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64 * 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c1(x)).flatten(1))


def test_crop_size_rules():
    assert crop_size((3, 416, 416), 0.5) == (3, 192, 192)  # 208 rounded down to a multiple of 32
    assert crop_size((3, 48, 320), 0.5) == (3, 48, 160)  # short axes stay whole
    assert crop_size((3, 64, 64), 0.25) == (3, 32, 32)  # at least 32
    assert crop_size((1, 4000), 0.5) == (1, 2000 // 32 * 32)  # a signal: the last axis
    assert crop_size((700,), 0.5) is None  # a packed row: never
    assert crop_size((3, 416, 416), 1.0) is None
    assert crop_size((3, 40, 40), 0.5) is None  # nothing long enough
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    v = random_crop(x, (3, 4, 6), torch.Generator().manual_seed(0))
    assert v.shape == (2, 3, 4, 6)
    i, j = [int(t) for t in torch.nonzero(x[0, 0] == v[0, 0, 0, 0])[0]]
    assert torch.equal(v, x[:, :, i:i + 4, j:j + 6])  # a contiguous window, the same for the whole batch


def test_crop_fails_names_the_error():
    x = torch.zeros(2, 1, 64, 64)
    assert crop_fails([FullyConv()], x, (1, 32, 32)) is None
    why = crop_fails([Flat()], x, (1, 32, 32))
    assert why is not None and "mat1" in why and "\n" not in why


def _task(model: nn.Module, n: int = 48):
    x = np.random.default_rng(0).normal(size=(n, 1, 64, 64)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(a)).numpy()

    return teacher_task("x", x, run, seed=0)


@pytest.mark.parametrize("net,crops", [(FullyConv, True), (Flat, False)])
def test_matching_on_crops(net, crops):
    torch.manual_seed(0)
    teacher = net().eval()
    task = _task(teacher)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rec = match(student, teacher, task, Matching(max_steps=30, max_seconds=60, batch_size=8, crop=0.5,
                                                  eval_every=10), quiet=True)
    assert rec["steps"] == 30 and rec["val_score"] > rec["val_score_before"]
    if crops:
        assert rec["crop"] == [32, 32] and "random 32x32 crops" in rec["augmentation"]
    else:
        assert "crop" not in rec and rec["crop_note"].startswith("full inputs: the model does not take crops")


def _err(student: nn.Module, teacher: nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        a, b = student(torch.from_numpy(x)), teacher(torch.from_numpy(x))
    return float(((a - b) ** 2).mean() / (b ** 2).mean())


@pytest.mark.parametrize("wave,crop", [(1, 1.0), (3, 1.0), (1, 0.5)])
def test_reconstruct_waves_and_crops(wave, crop):
    torch.manual_seed(0)
    teacher = FullyConv().eval()
    x = np.random.default_rng(1).normal(size=(40, 1, 64, 64)).astype(np.float32)
    student = copy.deepcopy(teacher)
    pruner, _ = make_pruner(student, (1, 64, 64), ratio=0.4, importance="l2")
    kept = prune_recording(pruner, student)
    before = _err(student, teacher, x[32:])
    rec = reconstruct(student, teacher, kept, x[:32], Reconstruct(samples=32, wave=wave, crop=crop))
    assert rec["refitted"] and _err(student, teacher, x[32:]) < 0.8 * before  # held-out samples
    assert ("crop" in rec) == (crop < 1)
