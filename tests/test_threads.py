"""Threads of PyTorch work outside the timer: training, probes and the export's parity check run on one
intra-op thread for small models (a second thread only spins against other processes on a shared machine),
and every one of them gives the caller's thread count back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.models.counts import count_macs
from edgeslim.models.probe import probe
from edgeslim.train import SMALL_BATCH_MACS, train_threads


class _Spy(nn.Module):
    """Records the intra-op thread count seen inside each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.fc(x)


def test_probe_and_parity_run_on_one_thread_and_restore(tmp_path: Path) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        net = _Spy()
        assert count_macs(net, (4,)) == 12  # 3 outputs x 4 inputs
        probe(net, (4,), [])
        out = export_onnx(net, (4,), tmp_path / "m.onnx", check=np.ones((8, 4), np.float32))
        assert out["parity_max_abs_diff"] < 1e-5
        assert net.seen and set(net.seen) == {1}  # every forward outside training: one thread
        assert torch.get_num_threads() == 2       # and the caller's count given back
    finally:
        torch.set_num_threads(old)


def test_train_threads_one_for_every_zoo_model_at_its_reference_input() -> None:
    for arch, shape in (("resnet8", (1, 8, 8)), ("lenet300", (1, 8, 8)), ("dscnn", (1, 40))):
        net = models.build_model(models.make_spec(arch, shape, 10))
        assert count_macs(net, shape) * 64 < SMALL_BATCH_MACS
        assert train_threads(net, shape, 64) == 1
