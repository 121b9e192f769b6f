"""`run --model X.onnx --inputs X.npz`: an ONNX file in, no labels (the original is the teacher), three splits of
the user's inputs, held-out fidelity per stage; the model is checked before the data; nothing trains, calibrates
or picks on a held-out sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import assert_user_error, main_inproc
from torch import nn

import edgeslim
from edgeslim.data.unlabelled import augment, split_indices

ANY_MODEL = Path(edgeslim.__file__).parent / "recipes" / "any-model.yaml"
FAST = """version: 1
finetune: {epochs: 2, lr: 0.0005, batch_size: 32}
passes:
  - sensitivity_prune: {target: 0.4, mode: structured, max_ratio: 0.6, ratios: [0.25, 0.5]}
  - distill_outputs: {train: {epochs: 2, lr: 0.0002, batch_size: 32}}
  - quantize_int8: {}
"""
MATCHING = """version: 1
passes:
  - sensitivity_prune: {target: 0.4, mode: structured, max_ratio: 0.6, ratios: [0.25, 0.5], curve_samples: 16,
                        min_val_score: 0.999, max_tries: 2, matching: {max_steps: 20, eval_every: 10}}
  - distill_outputs: {matching: {max_steps: 20, eval_every: 10, features: 2}}
"""


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        y = y + torch.relu(self.c2(y))  # residual add
        return torch.softmax(self.fc(y.mean((2, 3))), 1)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("m") / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 12, 12),), str(p), input_names=["image"],
                      output_names=["probs"], dynamic_axes={"image": {0: "n"}, "probs": {0: "n"}}, dynamo=False,
                      opset_version=17)
    return p


def _inputs(path: Path, n: int, ids: bool = False) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3, 12, 12)).astype(np.float32)
    if ids:  # sample i carries its index in pixel (0, 0, 0): where a sample went can be read back
        x[:, 0, 0, 0] = 1000 + np.arange(n)
    np.savez(path, image=x)
    return path


def test_splits_are_disjoint_seeded_and_augmentation_is_recorded():
    a, b = split_indices(100, seed=3), split_indices(100, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    assert len(a["test"]) == 20 and len(a["val"]) == 20
    x = np.ones((10, 3, 8, 8), np.float32)
    out, rec = augment(x, 40, seed=0)
    assert out.shape == (40, 3, 8, 8) and rec["augmented"] and rec["from"] == 10
    assert augment(x, 5, 0)[1] == {"augmented": False}


def test_onnx_with_inputs_runs_with_held_out_fidelity(onnx_model, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(FAST)
    inputs = _inputs(tmp_path / "x.npz", 120)
    out = tmp_path / "run"
    code, stdout, err = main_inproc("run", str(recipe), "--model", str(onnx_model), "--inputs", str(inputs),
                                    "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "onnx" and res["task"]["labels"].startswith("none")
    assert res["task"]["augmentation"]["augmented"] and res["task"]["augmentation"]["from"] == 72  # 120 - 24 - 24
    base, pruned, distilled, int8 = res["stages"]
    assert base["fidelity"]["cosine"] == pytest.approx(1.0) and base["fidelity"]["split"] == "test"
    assert max(base["notes"]["conversion_parity_max_abs_diff"].values()) < 1e-5
    for s in (pruned, distilled):
        assert s["fidelity"]["split"] == "test" and s["fidelity"]["samples"] == 24
        assert s["fidelity_val"]["split"] == "val"
        assert s["fidelity"]["cosine"] > 0.98 and s["fidelity"]["per_output"]["probs"]["top1_agreement"] >= 0.9
        assert max(s["notes"]["parity_max_abs_diff"].values()) < 1e-4  # exported back, checked per output
    assert pruned["macs"] < 0.8 * base["macs"] and pruned["size_bytes"] < base["size_bytes"]
    assert distilled["speedup_vs_baseline"] is not None and base["latency_timing"].startswith("interleaved")
    assert int8["size_bytes"] < 0.6 * pruned["size_bytes"] and int8["fidelity"]["cosine"] > 0.98
    assert "held-out cosine" in stdout
    assert stdout.strip().splitlines()[-1].startswith("peak RSS ")  # printed last, recorded in results.json
    assert res["peak_rss_bytes"]["self"] > 50 << 20
    # resume: nothing is redone
    code, stdout, err = main_inproc("run", str(recipe), "--model", str(onnx_model), "--inputs", str(inputs),
                                    "-o", str(out))
    assert code == 0 and "[quantize_int8] done earlier" in stdout, err


@pytest.mark.parametrize("recipe_text", [FAST, MATCHING], ids=["finetune", "function-matching"])
def test_no_held_out_sample_reaches_training_calibration_sensitivity_or_the_pick(onnx_model, tmp_path, monkeypatch,
                                                                                recipe_text):
    from edgeslim.run import onnx as onnx_handler

    seen: set[int] = set()
    forward = onnx_handler.TeacherView.forward

    def spy(self, x):  # every PyTorch forward of the run's models: training, Taylor, sensitivity, epoch picks
        seen.update(int(round(v)) - 1000 for v in x[:, 0, 0, 0].detach().tolist() if abs(v - round(v)) < 0.2)
        return forward(self, x)

    monkeypatch.setattr(onnx_handler.TeacherView, "forward", spy)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    inputs = _inputs(tmp_path / "x.npz", 450, ids=True)  # 270 training samples >= 256: no augmentation, exact ids
    code, _, err = main_inproc("run", str(recipe), "--model", str(onnx_model), "--inputs", str(inputs),
                               "-o", str(tmp_path / "run"))
    assert code == 0, err
    parts = json.loads((tmp_path / "run" / "results.json").read_text())
    held_out = set(split_indices(450, seed=0)["test"].tolist())
    assert held_out and seen & set(range(450))  # the spy saw the samples
    assert seen & held_out == set()
    assert set(split_indices(450, seed=0)["val"].tolist()) <= seen  # validation is used (for the picks)
    assert parts["task"]["test"] == len(held_out) and not parts["task"]["augmentation"]["augmented"]


def test_onnx_without_inputs_names_inputs_and_the_recipe_and_checks_the_model_first(onnx_model, tmp_path):
    recipe = ANY_MODEL
    code, _, err = main_inproc("run", str(recipe), "--model", str(onnx_model), "-o", str(tmp_path / "r"))
    assert_user_error(code, err, "--inputs", "any-model.yaml")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx")
    code, _, err = main_inproc("run", str(recipe), "--model", str(bad), "--inputs", str(tmp_path / "none.npz"),
                               "-o", str(tmp_path / "r"))
    line = assert_user_error(code, err, "broken.onnx")
    assert "none.npz" not in line  # the model is checked before the data
    assert not (tmp_path / "r").exists()


def test_any_model_recipe_parses_for_onnx_and_pytorch():
    from edgeslim.recipe import load_recipe

    for kind in ("onnx", "pytorch", "zoo"):
        r = load_recipe(ANY_MODEL, kind=kind)
        assert [s.name for s in r.steps] == ["sensitivity_prune", "distill_outputs", "quantize_int8"]


def test_optimize_says_in_its_last_line_that_any_model_goes_further(onnx_model, tmp_path):
    inputs = _inputs(tmp_path / "x.npz", 16)
    code, stdout, err = main_inproc("optimize", str(onnx_model), "-o", str(tmp_path / "o.onnx"), "--inputs",
                                    str(inputs), "--bench-seconds", "0.5")
    assert code == 0, err
    last = [ln for ln in stdout.splitlines() if ln.strip()][-1]
    assert "edgeslim run edgeslim/recipes/any-model.yaml" in last and "--inputs" in last


def test_onnx_with_a_labelled_task_records_accuracy_and_fidelity(tmp_path):
    from conftest import quadrant_images

    class Quad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    x, y = quadrant_images(400)
    net = Quad()
    opt = torch.optim.Adam(net.parameters(), 0.01)
    for _ in range(150):  # a trained classifier: its accuracy is worth keeping
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x[:320])), torch.from_numpy(y[:320])).backward()
        opt.step()
    p = tmp_path / "quad.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 8, 8),), str(p), input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, dynamo=False, opset_version=17)
    data = tmp_path / "quad.npz"
    np.savez(data, x_train=x[:320], y_train=y[:320], x_test=x[320:], y_test=y[320:])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 3, lr: 0.002}\npasses:\n  - structured_prune: {ratio: 0.25}\n")
    code, _, err = main_inproc("run", str(recipe), "--model", str(p), "--task", str(data), "-o", str(tmp_path / "run"))
    assert code == 0, err
    base, pruned = json.loads((tmp_path / "run" / "results.json").read_text())["stages"]
    assert base["accuracy"] > 0.9 and pruned["accuracy"] > 0.85 and pruned["accuracy_split"] == "test"
    assert pruned["fidelity"]["split"] == "test" and pruned["fidelity"]["top1_agreement"] > 0.85
