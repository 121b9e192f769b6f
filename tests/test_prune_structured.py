"""Structured (channel) and depth pruning on residual, depthwise and plain models: channels really go,
the pruned model exports to ONNX with the same outputs, and reloads from safetensors + spec."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.models.counts import count_macs
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.passes import PASSES, RunContext
from edgeslim.pipeline import run_recipe
from edgeslim.prune.structured import channel_counts, removable_blocks
from edgeslim.recipe import parse_recipe
from edgeslim.train import TrainConfig, train_model

SMALL = {"resnet8": {"width": 4}, "dscnn": {"width": 8}, "mobilenetv1": {"alpha": 0.125}, "lenet5": {},
         "cnn1d": {"width": 8}}


def _ctx(tmp_path, spec, epochs=1) -> RunContext:
    return RunContext(stage_dir=tmp_path, spec=spec, finetune=TrainConfig(epochs=epochs),
                      quiet=True)


def _model(arch, task, epochs=2):
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **SMALL[arch])
    m = models.build_model(spec)
    train_model(m, task, TrainConfig(epochs=epochs), quiet=True)
    return m, spec


def _check_export_and_reload(model, spec, task, tmp_path):
    p = tmp_path / "pruned.onnx"
    export_onnx(model, task.input_shape, p)
    x = task.x_test[:32]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(run_batched(session(p), x) - ref).max() < 1e-4
    models.save_model(tmp_path / "saved", model, spec)
    back, _ = models.load_model(tmp_path / "saved")  # resize_to_state_dict rebuilds the pruned shapes
    with torch.no_grad():
        assert np.abs(back(torch.from_numpy(x)).numpy() - ref).max() < 1e-5


@pytest.mark.parametrize(("arch", "importance"), [
    ("resnet8", "taylor"), ("resnet8", "l2"), ("dscnn", "bn_scale"), ("mobilenetv1", "l1"),
    ("lenet5", "random"),
])
def test_structured_prune_removes_channels(tiny_image_task, tmp_path, arch, importance):
    task = tiny_image_task
    m, spec = _model(arch, task)
    ch0, macs0 = channel_counts(m), count_macs(m, task.input_shape)
    cfg = PASSES["structured_prune"].config(ratio=0.5, importance=importance)
    res = PASSES["structured_prune"].fn(m, task, cfg, _ctx(tmp_path, spec))
    ch1 = channel_counts(res.model)
    out_layer = list(ch0)[-1]
    assert ch1[out_layer] == ch0[out_layer] == task.num_classes  # the classifier's outputs are kept
    for n in ch0:
        if n != out_layer:
            assert ch1[n] == ch0[n] - int(0.5 * ch0[n]) or ch1[n] == ch0[n] // 2, (n, ch0[n], ch1[n])
    assert res.notes["macs_after"] == count_macs(res.model, task.input_shape) < 0.45 * macs0
    assert res.notes["params_after"] < res.notes["params_before"]
    assert not any("latency" in k or "speedup" in k for k in res.notes)  # a pass times nothing
    _check_export_and_reload(res.model, spec, task, tmp_path)


def test_residual_coupling_keeps_adds_consistent(tiny_image_task, tmp_path):
    m, spec = _model("resnet8", tiny_image_task)
    res = PASSES["structured_prune"].fn(m, tiny_image_task, PASSES["structured_prune"].config(ratio=0.5),
                                        _ctx(tmp_path, spec))
    net = res.model  # layer1 has an identity shortcut: stem and layer1.conv2 must keep equal widths
    assert net.stem[1].out_channels == net.layer1.conv2.out_channels == net.layer1.bn2.num_features == 2
    assert net.layer2.shortcut.out_channels == net.layer2.conv2.out_channels


def test_depthwise_groups_follow(tiny_image_task, tmp_path):
    m, spec = _model("dscnn", tiny_image_task)
    res = PASSES["structured_prune"].fn(m, tiny_image_task, PASSES["structured_prune"].config(ratio=0.5),
                                        _ctx(tmp_path, spec))
    dw = res.model.blocks[0][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 4


def test_iterative_schedule_and_layer_ratios(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _model("cnn1d", task)
    cfg = PASSES["structured_prune"].config(ratio=0.5, schedule="cubic", rounds=2, importance="taylor")
    res = PASSES["structured_prune"].fn(m, task, cfg, _ctx(tmp_path, spec))
    assert len(res.notes["rounds"]) == 2
    assert res.notes["rounds"][0]["params"] > res.notes["rounds"][1]["params"]
    assert res.notes["channels"]["features.1"] == [8, 4]
    m2, spec2 = _model("cnn1d", task, epochs=1)
    cfg2 = PASSES["structured_prune"].config(layer_ratios={"features.1": 0.75, "features.4": 0.25})
    res2 = PASSES["structured_prune"].fn(m2, task, cfg2, _ctx(tmp_path / "b", spec2, epochs=0))
    assert res2.notes["channels"]["features.1"] == [8, 2] and res2.notes["channels"]["features.4"] == [8, 6]
    with pytest.raises(EdgeslimError, match="unknown modules"):
        PASSES["structured_prune"].fn(m2, task, PASSES["structured_prune"].config(layer_ratios={"nope": 0.5}),
                                      _ctx(tmp_path, spec2))


def test_bn_scale_needs_batchnorm(tiny_image_task, tmp_path):
    m, spec = _model("lenet5", tiny_image_task, epochs=0)
    with pytest.raises(EdgeslimError, match="BatchNorm"):
        PASSES["structured_prune"].fn(m, tiny_image_task, PASSES["structured_prune"].config(importance="bn_scale"),
                                      _ctx(tmp_path, spec))


@pytest.mark.parametrize("arch", ["resnet8", "dscnn"])
def test_depth_prune_removes_a_block_and_replays(tiny_image_task, tmp_path, arch):
    task = tiny_image_task
    m, spec = _model(arch, task)
    blocks = removable_blocks(m, task.input_shape)
    assert blocks == (["layer1"] if arch == "resnet8" else ["blocks.0", "blocks.1", "blocks.2", "blocks.3"])
    res = PASSES["depth_prune"].fn(m, task, PASSES["depth_prune"].config(blocks=1), _ctx(tmp_path, spec))
    assert res.spec is not None and res.spec["edits"] == [{"edit": "identity", "module": res.notes["removed"][0]}]
    assert isinstance(res.model.get_submodule(res.notes["removed"][0]), torch.nn.Identity)
    assert res.notes["macs_after"] < res.notes["macs_before"]
    _check_export_and_reload(res.model, res.spec, task, tmp_path)
    with pytest.raises(EdgeslimError, match="removable"):
        PASSES["depth_prune"].fn(m, task, PASSES["depth_prune"].config(blocks=9), _ctx(tmp_path, res.spec))


def test_recipes_run_in_the_pipeline(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _model("resnet8", task)
    models.save_model(tmp_path / "base", m, spec)
    from edgeslim.api import RECIPES

    for name in ("structured-50", "unstructured-92"):
        text = re.sub(r"epochs: \d+", "epochs: 1", (RECIPES / f"{name}.yaml").read_text())
        res = run_recipe(parse_recipe(text, name), tmp_path / "base", task, tmp_path / name, quiet=True)
        base, last = res["stages"][0], res["stages"][-1]
        assert last["size_bytes_compressed"] is not None and base["size_bytes_compressed"] > 0
        if name == "structured-50":
            assert last["params"] < 0.4 * base["params"] and last["macs"] < 0.4 * base["macs"]
            assert last["speedup_b64_vs_baseline"] > 0 and last["latency_b64_ms_p50"] > 0  # the run's final timing
            ratio = base["latency_ms_p50"] / last["latency_ms_p50"]  # the table's figures give its speed-up
            assert last["speedup_vs_baseline"] == pytest.approx(ratio, rel=0.01)
        else:
            assert last["nonzero_params"] < 0.12 * base["nonzero_params"]
            assert last["size_bytes"] >= 0.9 * base["size_bytes"]  # dense ONNX: zeros still stored
            assert last["size_bytes_compressed"] < 0.6 * base["size_bytes_compressed"]  # graph text dominates
            stage = tmp_path / name / "stages" / "01_magnitude_prune"
            assert (stage / "model.sparse.npz").stat().st_size == last["notes"]["sparse_file_bytes"]
        assert json.loads((tmp_path / name / "results.json").read_text())["stages"][-1]["name"] == last["name"]


class _Concat(torch.nn.Module):
    """Two conv branches concatenated, then a conv and a classifier: Torch-Pruning must split the index
    ranges of the concat correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.Conv2d(1, 4, 3, padding=1)
        self.mix = torch.nn.Conv2d(10, 8, 1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))))


def test_concatenation_is_pruned_consistently(tiny_image_task, tmp_path):
    m = _Concat()
    res = PASSES["structured_prune"].fn(m, tiny_image_task, PASSES["structured_prune"].config(ratio=0.5),
                                        _ctx(tmp_path, {}, epochs=0))
    net = res.model
    assert (net.a.out_channels, net.b.out_channels, net.mix.out_channels) == (3, 2, 4)
    assert net.mix.in_channels == net.a.out_channels + net.b.out_channels
    p = tmp_path / "c.onnx"
    export_onnx(net, tiny_image_task.input_shape, p)
    x = tiny_image_task.x_test[:16]
    with torch.no_grad():
        assert np.abs(run_batched(session(p), x) - net(torch.from_numpy(x)).numpy()).max() < 1e-4


def test_structured_sensitivity_prune_on_residual_model(tiny_image_task, tmp_path):
    task = tiny_image_task
    m, spec = _model("resnet8", task)
    cfg = PASSES["sensitivity_prune"].config(target=0.4, mode="structured", ratios=[0.25, 0.5, 0.75])
    res = PASSES["sensitivity_prune"].fn(m, task, cfg, _ctx(tmp_path, spec))
    alloc = res.notes["allocation"]
    assert "fc" not in alloc and set(alloc) >= {"stem.1", "layer3.conv2"}
    assert res.notes["params_after"] < res.notes["params_before"]
    assert (tmp_path / "sensitivity.md").read_text().count("| layer3.conv2 | 2304 |") == 1
    _check_export_and_reload(res.model, spec, task, tmp_path)


class _Block(torch.nn.Module):
    """A tiny transformer block (rows of the image as tokens): attention + FFN with residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Linear(8, 32)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln = torch.nn.LayerNorm(32)
        self.ff1, self.ff2, self.fc = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x.flatten(1, 2))  # (N, 8 tokens, 32)
        h = self.ln(h + self.attn(h, h, h, need_weights=False)[0])
        h = h + self.ff2(torch.relu(self.ff1(h)))
        return self.fc(h.mean(1))


def test_attention_block_ffn_neurons_and_head_dims(tiny_image_task, tmp_path):
    torch.manual_seed(0)
    res = PASSES["structured_prune"].fn(_Block(), tiny_image_task, PASSES["structured_prune"].config(ratio=0.5),
                                        _ctx(tmp_path, {}, epochs=0))
    net = res.model
    assert net.ff1.out_features == 32 and net.attn.embed_dim == 16 and net.attn.num_heads == 4
    assert net.ln.normalized_shape == (16,)
    p = tmp_path / "t.onnx"
    export_onnx(net, tiny_image_task.input_shape, p)
    x = tiny_image_task.x_test[:16]
    with torch.no_grad():
        assert np.abs(run_batched(session(p), x) - net(torch.from_numpy(x)).numpy()).max() < 1e-4


@pytest.mark.parametrize("arch", ["resnet8", "mobilenetv1", "lenet5"])
def test_sensitivity_trials_on_one_dependency_graph_prune_as_a_graph_per_trial(arch, tiny_image_task):
    """Structured sensitivity builds Torch-Pruning's dependency graph once and replays each group on a copy: every
    layer and ratio leaves exactly the weights (shapes and values) a graph built for that trial leaves."""
    import copy

    import torch_pruning as tp

    from edgeslim.prune.sensitivity import candidate_layers, prune_one_structured

    task = tiny_image_task
    m, _ = _model(arch, task, epochs=1)
    dg = tp.DependencyGraph().build_dependency(m, torch.zeros(2, *task.input_shape))
    layers = [n for n, _ in candidate_layers(m, task, "structured")]
    assert len(layers) >= 2
    for name in layers:
        for r in (0.25, 0.75):
            a, b = copy.deepcopy(m), copy.deepcopy(m)
            prune_one_structured(a, name, r, task)
            prune_one_structured(b, name, r, task, dg=dg, source=m)
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (name, r)
            assert sum(v.numel() for v in sa.values()) < sum(v.numel() for v in m.state_dict().values())


class _MeanPooled(torch.nn.Module):
    """c2's channels are averaged away and the map added to a kept Linear's output: Torch-Pruning traces the mean
    as element-wise, so c2's group reaches `lin`'s output channels and its pruner would skip the group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.lin, self.fc = torch.nn.Linear(64, 64), torch.nn.Linear(64, 4)

    def prune_ignored(self) -> list[torch.nn.Module]:
        return [self.lin]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c2(torch.relu(self.c1(x)))).mean(1).flatten(1)
        return self.fc(torch.relu(y + self.lin(x.flatten(1))))


def test_sensitivity_prune_says_which_allocated_layers_cannot_be_pruned(tiny_image_task, tmp_path, monkeypatch):
    import edgeslim.passes.sensitivity_prune as sp

    task = tiny_image_task
    torch.manual_seed(0)
    m = _MeanPooled()
    train_model(m, task, TrainConfig(epochs=1), quiet=True)
    cfg = PASSES["sensitivity_prune"].config(target=0.3, mode="structured", ratios=[0.25, 0.5], max_ratio=0.5)
    res = PASSES["sensitivity_prune"].fn(m, task, cfg, _ctx(tmp_path, {}))
    assert list(res.notes["not_analysed"]) == ["c2"] and "lin" in res.notes["not_analysed"]["c2"]
    assert set(res.notes["allocation"]) == {"c1"} and "not_pruned" not in res.notes
    assert res.model.c1.out_channels < 8 and res.notes["macs_after"] < res.notes["macs_before"]
    # a ratio allocated to c2 anyway (not from the curves) is not applied and the notes say so
    monkeypatch.setattr(sp, "allocate", lambda curves, target, max_ratio: {"c1": 0.25, "c2": 0.5})
    m2 = _MeanPooled()
    res2 = PASSES["sensitivity_prune"].fn(m2, task, cfg, _ctx(tmp_path / "b", {}))
    assert res2.model.c2.out_channels == 8 and res2.model.c1.out_channels == 6
    assert res2.notes["not_pruned"]["c2"]["ratio"] == 0.5 and "lin" in res2.notes["not_pruned"]["c2"]["why"]
