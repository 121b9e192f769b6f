"""The one place the torch device is chosen (`edgeslim.accelerator`): auto / cpu / cuda, training moves to it
and back, export and measurements do not change with it, run.json records it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import edgeslim
from edgeslim import accelerator, api
from edgeslim.errors import EdgeslimError
from edgeslim.train import TrainConfig, train_model

CUDA = torch.cuda.is_available()
RECIPE = """version: 1
finetune: {epochs: 1, batch_size: 128}
passes:
  - distill: {width: 0.5, train: {epochs: 1, batch_size: 128}}
  - magnitude_prune: {sparsity: 0.5}
"""
FIGURES = ("accuracy", "params", "nonzero_params", "macs", "size_bytes")


def test_pick():
    assert accelerator.pick("cpu") == torch.device("cpu")
    assert accelerator.pick("auto") == torch.device("cuda" if CUDA else "cpu")
    with pytest.raises(EdgeslimError, match="valid values are auto, cpu, cuda"):
        accelerator.pick("gpu")
    assert accelerator.current() == accelerator.pick("auto")  # the default is auto
    with accelerator.use("cpu") as dev:
        assert dev == accelerator.current() == torch.device("cpu")
    assert accelerator.current() == accelerator.pick("auto")


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    from edgeslim.cli import app

    r = CliRunner().invoke(app, ["train", "--model", "lenet5", "--task", "digits", "--epochs", "1",
                                 "--out", str(tmp_path / "m"), "--accelerator", "cuda"])
    assert r.exit_code != 0 and isinstance(r.exception, EdgeslimError)
    assert "--accelerator cuda: PyTorch sees no CUDA GPU" in str(r.exception)
    assert not (tmp_path / "m").exists()  # refused before any work


def test_device_is_chosen_in_one_place():
    """`cuda` is named only in edgeslim/accelerator.py (and the CLI's help, built from its list)."""
    pkg = Path(edgeslim.__file__).parent
    hits = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if re.search(r"cuda", p.read_text()))
    assert hits == ["accelerator.py"]


def test_training_returns_the_model_to_the_cpu(tiny_image_task):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with accelerator.use("auto"):
        hist = train_model(net, tiny_image_task, TrainConfig(epochs=5, lr=0.03), quiet=True)
    assert accelerator.device_of(net) == torch.device("cpu")
    assert hist["val_accuracy"] > 0.6  # learned (chance: 0.25)


def _run(model: Path, out: Path, recipe: Path, acc: str) -> dict:
    return api.run(model, recipe, "digits", out, quiet=True, accelerator=acc)


@pytest.mark.skipif(CUDA, reason="on a GPU machine auto trains on the GPU: figures may differ in the last bits")
def test_cpu_and_auto_give_the_same_stage_figures(tmp_path):
    base = tmp_path / "base"
    api.train("lenet300", "digits", base, TrainConfig(epochs=2, batch_size=128), quiet=True, accelerator="cpu")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    a = _run(base, tmp_path / "cpu", recipe, "cpu")
    b = _run(base, tmp_path / "auto", recipe, "auto")
    assert [s["name"] for s in a["stages"]] == ["baseline", "distill", "magnitude_prune"]
    for sa, sb in zip(a["stages"], b["stages"]):
        assert {f: sa[f] for f in FIGURES} == {f: sb[f] for f in FIGURES}, sa["name"]
    assert a["stages"][2]["params"] < a["stages"][0]["params"]  # the distilled student is smaller
    for run in ("cpu", "auto"):
        meta = json.loads((tmp_path / run / "run.json").read_text())
        assert meta["accelerator"] == "cpu" and "accelerator" not in meta.get("recipe_digest", "")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_training_and_recipe(tmp_path):
    """On a GPU: training, distillation and mask-keeping fine-tuning run there; models come back to the CPU
    for export and measurement; run.json names the GPU."""
    base = tmp_path / "base"
    m = api.train("lenet300", "digits", base, TrainConfig(epochs=3, batch_size=128), quiet=True, accelerator="cuda")
    assert m["test_accuracy"] > 0.5
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    res = _run(base, tmp_path / "cuda", recipe, "cuda")
    assert [s["name"] for s in res["stages"]] == ["baseline", "distill", "magnitude_prune"]
    assert all(0 <= s["accuracy"] <= 1 for s in res["stages"])
    assert json.loads((tmp_path / "cuda" / "run.json").read_text())["accelerator"].startswith("cuda (")
