"""Evaluation forwards are bounded in input values (`train.eval_batch`): peak memory follows the batch, and
large inputs go a few at a time with the same outputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeslim.train import EVAL_VALUES, eval_batch, predict


def test_eval_batch_bounds_input_values():
    assert eval_batch(np.zeros((1000, 64), np.float32), 512) == 512  # small samples: the asked batch
    assert eval_batch(np.zeros((10, 3, 48, 320), np.float32), 512) == EVAL_VALUES // (3 * 48 * 320) == 22
    assert eval_batch(np.zeros((10, 3, 800, 608), np.float32), 512) == 1
    assert eval_batch(np.zeros((10,), np.float32), 8) == 8


def test_predict_same_outputs_in_small_batches():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = np.random.default_rng(0).normal(size=(30, 3, 256, 256)).astype(np.float32)  # 5 per forward
    assert eval_batch(x, 512) == 5
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert np.allclose(predict(m, x), ref, atol=1e-5)
