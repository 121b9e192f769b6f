"""`api.run` on an in-memory `nn.Module`: captured by torch.export into RUN/model.pt2 and run as that program,
the same run folder and figures as the same model given as a `.pt2` file; a module torch.export cannot
capture is one line and writes nothing; the options object and the keywords are the same run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim import api
from edgeslim.errors import EdgeslimError
from edgeslim.run.options import RunOptions

RECIPE = "version: 1\nfinetune: {epochs: 1}\npasses:\n  - structured_prune: {ratio: 0.5}\n"
FIGURES = ("params", "nonzero_params", "macs", "size_bytes", "accuracy")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class Opaque(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # leaves the graph: torch.export cannot capture it
        return self.head(torch.from_numpy(x.mean((1, 2, 3)).numpy()[:, None].repeat(8, 1)))


@pytest.fixture()
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


def test_a_module_runs_as_its_pt2_does(tmp_path, recipe, tiny_image_task):
    torch.manual_seed(0)
    net = Net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    res = api.run(net, recipe, tiny_image_task, tmp_path / "run", quiet=True, device="cortex-m4")
    run = tmp_path / "run"
    for f in ("run.json", "recipe.yaml", "model.pt2", "results.json", "report.md", "report.html",
              "stages/00_baseline/model.pt2", "stages/00_baseline/metrics.json",
              "stages/01_structured_prune/model.pt2", "stages/01_structured_prune/model.onnx"):
        assert (run / f).is_file(), f
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # the user's module is untouched
    saved = json.loads((run / "results.json").read_text())
    base, pruned = saved["stages"]
    assert [base["name"], pruned["name"]] == ["baseline", "structured_prune"]
    assert base["params"] == sum(p.numel() for p in net.parameters()) == 116  # conv 8*9+8, head 8*4+4
    assert pruned["params"] < base["params"] and pruned["macs"] < base["macs"]
    assert saved["device"] == "cortex-m4"
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == str((run / "model.pt2").resolve()) and len(meta["model_digest"]) == 16

    # the same module as a .pt2 file, through the path route: the same stage figures
    batch = torch.export.Dim("batch")
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), pt2)
    other = api.run(pt2, recipe, tiny_image_task, tmp_path / "file", RunOptions(quiet=True, device="cortex-m4"))
    for a, b in zip(res["stages"], other["stages"]):
        assert {f: a[f] for f in FIGURES} == {f: b[f] for f in FIGURES}, a["name"]

    # again: resumes; another module in the same folder is refused without force
    again = api.run(net, recipe, tiny_image_task, run, quiet=True, device="cortex-m4")
    assert [s["params"] for s in again["stages"]] == [s["params"] for s in res["stages"]]
    torch.manual_seed(1)
    with pytest.raises(EdgeslimError, match="holds a different run \\(model_digest differ"):
        api.run(Net(), recipe, tiny_image_task, run, quiet=True, device="cortex-m4")


def test_a_module_with_inputs_and_no_labels(tmp_path, recipe):
    from conftest import quadrant_images

    npz = tmp_path / "x.npz"
    np.savez(npz, x=quadrant_images(100)[0])
    torch.manual_seed(2)
    res = api.run(Net(), recipe, None, tmp_path / "run", inputs=npz, quiet=True)
    assert res["kind"] == "pytorch" and res["task"]["labels"].startswith("none") and res["task"]["test"] == 20
    base, pruned = res["stages"]
    assert base["fidelity"]["cosine"] == pytest.approx(1.0) and pruned["fidelity"]["cosine"] < 0.9999
    assert pruned["params"] < base["params"] and (tmp_path / "run" / "model.pt2").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["task"] == f"inputs:{npz.resolve()}"


def test_a_module_torch_export_cannot_capture_is_one_line(tmp_path, recipe, tiny_image_task):
    with pytest.raises(EdgeslimError) as e:
        api.run(Opaque(), recipe, tiny_image_task, tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert msg.startswith("module Opaque: torch.export cannot capture this module") and "\n" not in msg
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_run_arguments_are_checked(tmp_path, recipe, tiny_image_task):
    with pytest.raises(EdgeslimError, match="api.run takes the model first"):
        api.run("structured-50", tmp_path / "m", "digits", tmp_path / "run")  # type: ignore[arg-type]
    with pytest.raises(EdgeslimError, match="^run: --seeds: Extra inputs are not permitted"):
        api.run(Net(), recipe, tiny_image_task, tmp_path / "run", seeds=3)
    with pytest.raises(EdgeslimError, match="needs a task"):
        api.run(Net(), recipe, None, tmp_path / "run")
    assert repr(RunOptions(seed=2, device="cortex-m4")) == "RunOptions(device='cortex-m4', seed=2)"
    assert not (tmp_path / "run").exists()
