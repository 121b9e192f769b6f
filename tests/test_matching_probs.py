"""Function matching on probability outputs (`Matching.probabilities`): a teacher whose outputs all lie in 0..1
is matched by the binary KL divergence (its gradient at the sigmoid's input does not vanish where it saturates),
and recovers a map pushed into saturation."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from edgeslim.data.unlabelled import teacher_task
from edgeslim.distill.matching import Matching, _binary_kl, match


class SharpMap(nn.Module):
    """A detector-like dense map: a steep sigmoid (DB's k = 50) of a conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(50 * self.c2(torch.relu(self.c1(x))))  # [N, 1, H, W]: a map, not class scores


def _setup():
    torch.manual_seed(0)
    teacher = SharpMap().eval()
    x = np.random.default_rng(0).normal(size=(64, 1, 16, 16)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(a)).numpy()

    task = teacher_task("x", x, run, seed=0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.c2.bias.add_(0.5)  # the map saturates at 1 almost everywhere: an MSE gradient of ~0
    return teacher, task, student


def test_binary_kl_is_a_divergence():
    t = torch.tensor([0.0, 0.3, 1.0])
    assert float(_binary_kl(t, t)) < 1e-5
    assert float(_binary_kl(torch.tensor([0.5, 0.5, 0.5]), t)) > 0.1


def test_kl_recovers_a_saturated_map():
    teacher, task, student = _setup()
    cfg = dict(max_steps=60, max_seconds=60, batch_size=16, eval_every=20, lr=1e-2, noise=0.0, mixup=0.0)
    kl_student = copy.deepcopy(student)
    kl = match(kl_student, teacher, task, Matching(**cfg), quiet=True)
    mse = match(student, teacher, task, Matching(probabilities="mse", **cfg), quiet=True)
    assert kl["output_loss"].startswith("binary KL") and mse["output_loss"] == "normalised MSE"
    assert kl["val_score_before"] == mse["val_score_before"]
    assert kl["val_score"] > kl["val_score_before"] + 0.1
