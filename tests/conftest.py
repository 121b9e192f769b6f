"""Shared fixtures. Tests run on 2 cores with xdist: one torch thread per worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.data.task import Task, make_task

torch.set_num_threads(1)


def quadrant_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 1x8x8 images in 4 classes: the class is the bright quadrant. A tiny CNN learns it in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.3
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, r * 4 : r * 4 + 4, col * 4 : col * 4 + 4] += 0.7
    return x, y


def trained(arch: str, task: Task, epochs: int, folder: Path | None = None, **kwargs: Any) -> tuple[nn.Module, dict]:
    """A zoo model trained briefly (seed 0) on `task`; saved as a model folder when `folder` is given."""
    from edgeslim import models
    from edgeslim.train import TrainConfig, train_model

    torch.manual_seed(0)
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **kwargs)
    net = models.build_model(spec)
    train_model(net, task, TrainConfig(epochs=epochs), quiet=True)
    if folder is not None:
        models.save_model(folder, net, spec)
    return net, spec


@pytest.fixture(scope="session")
def tiny_image_task() -> Task:
    """A 4-class task of 1x8x8 images (see `quadrant_images`)."""
    x, y = quadrant_images(400)
    return make_task("tiny", x[:320], y[:320], x[320:], y[320:], seed=0)


@pytest.fixture(scope="session")
def tiny_seq_task() -> Task:
    """A 3-class task of 1x16 sequences (class = position of a bump)."""
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.2, (n, 1, 16)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, int(c) * 5 : int(c) * 5 + 5] += 1.0
    return make_task("tinyseq", x[:240], y[:240], x[240:], y[240:], seed=0)


# Fuzz tests (hypothesis): bounded example counts, no deadline (a shared 2-core VM is slow now and then),
# no example database written into the working tree, and the same examples on every run (CI repeatable).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "edgeslim", deadline=None, database=None, derandomize=True, print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    settings.load_profile("edgeslim")
except ImportError:  # pragma: no cover  (the test extra installs hypothesis)
    pass
