"""A structure structured pruning cannot handle stops the run in one line, exit 1, no half-written stage
(issue 23; `edgeslim.prune.unsupported`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import assert_user_error, main_inproc
from torch import nn

from edgeslim import api
from edgeslim.errors import EdgeslimError
from edgeslim.prune.unsupported import failing_layer, structure_errors
from edgeslim.train import TrainConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_image_task) -> Path:
    out = tmp_path_factory.mktemp("unsupported") / "lenet5"
    api.train("lenet5", tiny_image_task, out, TrainConfig(epochs=1), quiet=True)
    return out


def test_torch_pruning_failure_is_one_line_naming_pass_stage_and_layer(model, tiny_image_task, tmp_path,
                                                                       monkeypatch) -> None:
    import torch_pruning as tp

    def broken(self, layer: nn.Module, idxs):  # what Torch-Pruning does on ddddocr's common.onnx
        raise IndexError("index 12 is out of bounds for dimension 0 with size 12")

    monkeypatch.setattr(tp.pruner.function.ConvPruner, "prune_out_channels", broken)
    t = tiny_image_task
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=t.x_train, y_train=t.y_train, x_test=t.x_test, y_test=t.y_test)
    rec = tmp_path / "r.yaml"
    rec.write_text("version: 1\nfinetune: {epochs: 1}\npasses:\n  - structured_prune: {ratio: 0.5}\n")
    run = tmp_path / "run"
    code, _, err = main_inproc("run", str(rec), "-m", str(model), "-t", str(data), "-o", str(run))
    line = assert_user_error(code, err, "structured_prune (stage 01_structured_prune)", "IndexError: index 12",
                             "at layer '", "(Conv2d)", "layer_ratios", "edgeslim optimize")
    assert "Traceback" not in err and line.count("\n") == 0
    stages = sorted(p.name for p in (run / "stages").iterdir())
    assert stages == ["00_baseline"]  # the failed stage left nothing, not even its temporary folder
    assert not (run / "results.json").exists()


def test_failing_layer_is_found_in_a_forward_and_bugs_are_not_swallowed() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(3, -1)  # fails on 4 elements: a structure the pruned graph cannot take

    m = nn.Sequential(nn.Linear(2, 4), Odd())
    with pytest.raises(EdgeslimError) as e, structure_errors("structured_prune", "02_structured_prune", m):
        m(torch.zeros(1, 2))
    assert "at layer '1' (Odd)" in str(e.value) and "02_structured_prune" in str(e.value)
    assert failing_layer(ValueError("x"), m) is None
    with pytest.raises(KeyError), structure_errors("structured_prune", "02_structured_prune", m):
        raise KeyError("our own bug, outside the model and Torch-Pruning")
