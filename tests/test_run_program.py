"""Your own PyTorch model through recipes from the command line, without a pickle: a `torch.export` program
(.pt2), a state dict with --model-class, a trusted pickle re-stored as .pt2 programs; resume and `export` of a
stage; a pass that cannot take the model's kind fails at parse time naming the line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quadrant_images
from reliability_helpers import assert_user_error, main_inproc
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent

NET_SOURCE = '''
import torch
from torch import nn


class KwsNet(nn.Module):
    """Not in the zoo: conv + BN + residual add + linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = y + torch.relu(self.body(y))
        return self.head(y.mean((2, 3)))
'''


@pytest.fixture(scope="module")
def net_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    (folder / "kwsnet.py").write_text(NET_SOURCE)
    sys.path.insert(0, str(folder))
    import kwsnet

    yield folder, kwsnet
    sys.path.remove(str(folder))
    sys.modules.pop("kwsnet", None)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    x, y = quadrant_images(400)
    p = tmp_path_factory.mktemp("data") / "quad.npz"
    np.savez(p, x_train=x[:320], y_train=y[:320], x_test=x[320:], y_test=y[320:])
    return p


def _program(net: nn.Module, path: Path) -> Path:
    # the three lines of the README
    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def test_pt2_goes_through_structured_50_export_and_resume(net_module, task_file, tmp_path):
    _, kwsnet = net_module
    torch.manual_seed(0)
    net = kwsnet.KwsNet()
    pt2 = _program(net, tmp_path / "kws.pt2")
    loaded, spec = models.load_model(pt2)
    x = torch.from_numpy(quadrant_images(8)[0])
    assert spec["arch"] == "program" and spec["input_shape"] == [1, 8, 8]
    assert torch.allclose(loaded(x), net(x), atol=1e-6)  # lifted layers compute what the program did
    assert {type(m).__name__ for m in loaded.modules()} >= {"Conv2d", "LiftedBatchNorm", "Linear"}

    out = tmp_path / "run"
    recipe = ROOT / "recipes" / "structured-50.yaml"
    code, stdout, err = main_inproc("run", str(recipe), "--model", str(pt2), "--task", str(task_file), "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    base, pruned = res["stages"]
    assert pruned["params"] < 0.45 * base["params"]  # half the channels of the 16-channel layers
    assert pruned["macs"] < 0.45 * base["macs"]
    assert pruned["accuracy"] > 0.8  # fine-tuned on the quadrant task
    stage = out / "stages" / "01_structured_prune"
    assert (stage / "model.pt2").is_file() and not (stage / "model.safetensors").exists()
    # the stage reopens with no user code: export it
    code, _, err = main_inproc("export", str(stage), "--format", "onnx", "-o", str(tmp_path / "s.onnx"),
                               "--task", str(task_file))
    assert code == 0, err
    assert (tmp_path / "s.onnx").is_file()
    # resume: every stage done earlier
    code, stdout, err = main_inproc("run", str(recipe), "--model", str(pt2), "--task", str(task_file), "-o", str(out))
    assert code == 0, err
    assert "[structured_prune] done earlier" in stdout


def test_state_dict_with_model_class(net_module, task_file, tmp_path, monkeypatch):
    folder, kwsnet = net_module
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = kwsnet.KwsNet()
    sd = tmp_path / "kws.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(sd))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1}\npasses:\n  - structured_prune: {ratio: 0.5}\n")
    monkeypatch.chdir(folder)  # the class is imported from the user's working directory
    code, _, err = main_inproc("run", str(recipe), "-m", str(sd), "-t", str(task_file), "-o", str(tmp_path / "run"))
    assert_user_error(code, err, "--model-class")
    code, _, err = main_inproc("run", str(recipe), "-m", str(sd), "-t", str(task_file), "-o", str(tmp_path / "run"),
                               "--model-class", "nosuchmod:Net")
    assert_user_error(code, err, "--model-class: cannot import module 'nosuchmod'")
    assert not (tmp_path / "run").exists()
    code, _, err = main_inproc("run", str(recipe), "-m", str(sd), "-t", str(task_file), "-o", str(tmp_path / "run"),
                               "--model-class", "kwsnet:KwsNet")
    assert code == 0, err
    base, _ = models.load_model(tmp_path / "run" / "stages" / "00_baseline")
    x = torch.from_numpy(quadrant_images(4)[0])
    assert torch.allclose(base(x), net.eval()(x), atol=1e-5)  # the baseline stage is the state dict's model


def test_trusted_pickle_stages_reopen_without_the_pickle(net_module, task_file, tmp_path, monkeypatch):
    folder, kwsnet = net_module
    pt = tmp_path / "full.pt"
    torch.save(kwsnet.KwsNet(), pt)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1}\npasses:\n  - magnitude_prune: {sparsity: 0.5}\n")
    monkeypatch.chdir(folder)
    code, _, err = main_inproc("run", str(recipe), "-m", str(pt), "-t", str(task_file), "-o", str(tmp_path / "run"),
                               "--trust-pickle")
    assert code == 0, err
    for stage in ("00_baseline", "01_magnitude_prune"):
        assert (tmp_path / "run" / "stages" / stage / "model.pt2").is_file()
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("kwsnet", None)
    sys.path.remove(str(folder))
    try:  # the class is not importable any more: the stage still reopens (a program, no pickle)
        net, spec = models.load_model(tmp_path / "run" / "stages" / "01_magnitude_prune")
    finally:
        sys.path.insert(0, str(folder))
    w = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)][1]
    assert spec["arch"] == "program" and float((w == 0).float().mean()) >= 0.45


def test_pass_that_cannot_take_the_kind_fails_at_parse_time():
    text = "version: 1\npasses:\n  - structured_prune: {ratio: 0.5}\n  - lowrank: {}\n"
    assert parse_recipe(text, "r.yaml", kind="zoo").steps[1].name == "lowrank"
    with pytest.raises(EdgeslimError, match=r"^r\.yaml:4: pass 'lowrank' takes zoo models, not a PyTorch program"):
        parse_recipe(text, "r.yaml", kind="pytorch")
    with pytest.raises(EdgeslimError, match=r"r\.yaml:3: pass 'structured_prune' takes zoo or pytorch or onnx"):
        parse_recipe(text, "r.yaml", kind="text")


def test_fixed_batch_program_is_one_line(net_module, tmp_path):
    _, kwsnet = net_module

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            return self.fc(x.view(1, 64))  # batch 1 only

    p = tmp_path / "flat.pt2"
    torch.export.save(torch.export.export(Flat().eval(), (torch.zeros(1, 1, 8, 8),)), p)
    from edgeslim.models.program import check_batch

    net, spec = models.load_model(p)
    with pytest.raises(EdgeslimError, match="dynamic batch") as e:
        check_batch(net, tuple(spec["input_shape"]), p)
    assert "\n" not in str(e.value)


def test_pt2_goes_through_any_model(net_module, task_file, tmp_path):
    import edgeslim

    _, kwsnet = net_module
    torch.manual_seed(2)
    pt2 = _program(kwsnet.KwsNet(), tmp_path / "kws.pt2")
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(Path(edgeslim.__file__).parent / "recipes" / "any-model.yaml"),
                               "--model", str(pt2), "--task", str(task_file), "-o", str(out))
    assert code == 0, err
    names = [s["name"] for s in json.loads((out / "results.json").read_text())["stages"]]
    assert names == ["baseline", "sensitivity_prune", "distill_outputs", "quantize_int8"]
    assert (out / "stages" / "02_distill_outputs" / "model.pt2").is_file()


def test_pt2_with_inputs_and_no_labels(net_module, tmp_path):
    _, kwsnet = net_module
    torch.manual_seed(3)
    pt2 = _program(kwsnet.KwsNet(), tmp_path / "kws.pt2")
    npz = tmp_path / "x.npz"
    np.savez(npz, x=quadrant_images(150)[0])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 2, batch_size: 32}\npasses:\n"
                      "  - structured_prune: {ratio: 0.5}\n  - distill_outputs: {train: {epochs: 8, lr: 0.001}}\n")
    out = tmp_path / "run"
    code, stdout, err = main_inproc("run", str(recipe), "--model", str(pt2), "--inputs", str(npz), "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "pytorch" and res["task"]["labels"].startswith("none") and res["task"]["test"] == 30
    base, pruned, distilled = res["stages"]
    assert base["fidelity"]["cosine"] == pytest.approx(1.0)
    assert distilled["fidelity"]["split"] == "test" and distilled["fidelity"]["cosine"] > 0.9, distilled["fidelity"]
    assert distilled["fidelity"]["cosine"] > pruned["fidelity"]["cosine"]  # distillation on outputs recovers
    assert pruned["params"] < 0.5 * base["params"] and (out / "splits" / "test.npz").is_file()
    code, _, err = main_inproc("run", str(recipe), "--model", str(pt2), "--inputs", str(npz), "--task",
                               str(npz), "-o", str(tmp_path / "r2"))
    assert_user_error(code, err, "not both")


class TwoHeads(nn.Module):
    """A user's net with two outputs: a per-pixel mask and a per-image score (a tuple, or a dict)."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.as_dict = as_dict
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.mask = nn.Conv2d(16, 1, 1)
        self.score = nn.Linear(16, 3)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        mask, score = self.mask(y), self.score(y.mean((2, 3)))
        return {"mask": mask, "score": score} if self.as_dict else (mask, score)


@pytest.mark.parametrize("as_dict,names", [(False, ["output_0", "output_1"]), (True, ["mask", "score"])])
def test_pt2_with_two_outputs_keeps_them_through_pruning_export_and_resume(tmp_path, task_file, as_dict, names):
    import onnxruntime as ort

    torch.manual_seed(4)
    pt2 = _program(TwoHeads(as_dict), tmp_path / "two.pt2")
    npz = tmp_path / "x.npz"
    np.savez(npz, x=quadrant_images(120)[0])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1, batch_size: 32}\npasses:\n  - structured_prune: {ratio: 0.5}\n")
    out = tmp_path / "run"
    args = ("run", str(recipe), "--model", str(pt2), "--inputs", str(npz), "-o", str(out))
    code, _, err = main_inproc(*args)
    assert code == 0, err
    base, pruned = json.loads((out / "results.json").read_text())["stages"]
    assert pruned["params"] < 0.6 * base["params"]
    for s in (base, pruned):  # each stage's ONNX keeps the model's two outputs (the output layers kept whole)
        outs = ort.InferenceSession(str(out / s["onnx"])).get_outputs()
        assert [(o.name, o.shape[1:]) for o in outs] == [(names[0], [1, 8, 8]), (names[1], [3])]
        assert set(s["fidelity"]["per_output"]) == set(names)
    assert pruned["fidelity"]["per_output"][names[1]]["top1_agreement"] is not None  # a score output
    code, _, err = main_inproc(*args)  # resume: the stages reopen as the same two-output view
    assert code == 0, err
    code, _, err = main_inproc("export", str(out / "stages" / "01_structured_prune"), "--format", "onnx",
                               "-o", str(tmp_path / "e.onnx"))
    assert code == 0, err
    assert [o.name for o in ort.InferenceSession(str(tmp_path / "e.onnx")).get_outputs()] == names
    code, _, err = main_inproc("run", str(recipe), "--model", str(pt2), "--task", str(task_file),
                               "-o", str(tmp_path / "labelled"))
    assert_user_error(code, err, "returns 2 outputs", "--inputs")
    assert not (tmp_path / "labelled").exists()


def test_pt2_with_two_inputs_is_one_line_pointing_to_onnx(tmp_path):
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4 + 3, 2)

        def forward(self, img, meta):
            return self.head(torch.cat([self.c(img).mean((2, 3)), meta], 1))

    b = torch.export.Dim("batch")
    ep = torch.export.export(TwoIn().eval(), (torch.zeros(2, 1, 8, 8), torch.zeros(2, 3)), dynamic_shapes=({0: b}, {0: b}))
    torch.export.save(ep, tmp_path / "two_in.pt2")
    np.savez(tmp_path / "x.npz", img=np.zeros((40, 1, 8, 8), np.float32), meta=np.zeros((40, 3), np.float32))
    code, _, err = main_inproc("run", str(ROOT / "edgeslim" / "recipes" / "any-model.yaml"), "--model",
                               str(tmp_path / "two_in.pt2"), "--inputs", str(tmp_path / "x.npz"), "-o",
                               str(tmp_path / "run"))
    assert_user_error(code, err, "two_in.pt2", "takes 2 inputs (img, meta)", "torch.onnx.export")
    assert not (tmp_path / "run").exists()
