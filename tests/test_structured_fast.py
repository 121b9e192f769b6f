"""`structured_fast` (issue 27) on a tiny ResNet-8 with an injected measurer: channel counts land on the
fast side of the (fake) latency staircase, residual groups stay consistent, and the speed target picks
the least pruned candidate that reaches it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgeslim
from edgeslim import models
from edgeslim.measure.latency import Latency
from edgeslim.passes import PASSES, RunContext
from edgeslim.passes import structured_fast as sf
from edgeslim.prune import channel_multiples as cm
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, train_model

STEP = 8  # the fake staircase: a conv's time grows every 8 channels


def _lat(ms: float) -> Latency:
    return Latency(ms, ms, ms, ms, 30, 1, 1)


class FakeMeasurer:
    """Stands in for `ctx.measure`: probe models (keys are channel counts) cost ceil(c / STEP); a whole model
    costs 1 ms + its weight count / 1000 (a model twice as small is close to twice as fast)."""

    threads = 1

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def time_together(self, paths, feed, **timer):  # noqa: ANN001, ANN201 - Measurer.time_together's shape
        self.calls.append(list(paths))
        out = {}
        for k, p in paths.items():
            if k.isdigit():
                out[k] = _lat(float(math.ceil(int(k) / STEP)))
            else:
                m = onnx.load(str(p))
                n = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
                out[k] = _lat(1.0 + n / 1000)
        return out


def test_fast_counts_keep_the_top_of_each_step() -> None:
    times = {c: float(math.ceil(c / 16)) * (1.0 + 0.01 * (c % 3)) for c in range(4, 65, 4)}
    assert cm.fast_counts(times) == [16, 32, 48, 64]
    assert cm.round_down(40, [16, 32, 48, 64]) == 32 and cm.round_down(10, [16, 32]) == 16
    geo = {"a": (64, (4, 4)), "b": (64, (4, 4)), "c": (16, (8, 8))}
    r = cm.layer_ratios(geo, {(4, 4): [16, 32, 48, 64], (8, 8): [8, 16]}, {(64, (4, 4)): 0.6, (16, (8, 8)): 0.5})
    assert r["a"] == r["b"] and int(64 * (1 - r["a"])) == 16 and int(16 * (1 - r["c"])) == 8


@pytest.fixture(scope="module")
def resnet(tiny_image_task):
    torch.manual_seed(0)
    spec = models.make_spec("resnet8", tiny_image_task.input_shape, tiny_image_task.num_classes, width=16)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=4, lr=3e-3), quiet=True)
    return m, spec


def _run(resnet, task, tmp_path: Path, **cfg):
    m, spec = resnet
    teacher = copy.deepcopy(m)
    meas = FakeMeasurer()
    ctx = RunContext(stage_dir=tmp_path / "stage", spec=spec, finetune=TrainConfig(epochs=1, lr=1e-3), quiet=True,
                     teacher_loader=lambda: copy.deepcopy(teacher), measure=meas)  # type: ignore[arg-type]
    ctx.stage_dir.mkdir(parents=True)
    info = PASSES["structured_fast"]
    res = info.fn(copy.deepcopy(m), task, info.config(**cfg), ctx)
    return res, meas


def test_structured_fast_reaches_the_target_with_fast_consistent_counts(resnet, tiny_image_task, tmp_path) -> None:
    res, meas = _run(resnet, tiny_image_task, tmp_path, target_speedup=2.2, ratios=[0.0, 0.5, 0.75], tries=1,
                     calibration_batches=1, screen_epochs=0)
    n, net = res.notes, res.model
    assert n["speed_target_met"] and n["speedup_timed"] >= 2.2 * 1.03
    # the least pruned candidate that reaches the target (most weights) is the one kept
    reach = [c for c in n["ladder"] if c["speedup"] >= 2.2 * 1.03]
    assert n["chosen"] == max(reach, key=lambda c: c["params"])["candidate"]
    # every conv sits on the fast side of a step of the fake staircase (or keeps its full width)
    for name, (before, after) in n["channels"].items():
        if after is not None and name != "fc":
            assert after == before or after % STEP == 0, (name, before, after)
    # residual groups pruned together: what a block adds has one width
    for blk in (net.layer2, net.layer3):
        sc = blk.shortcut
        assert blk.conv2.out_channels == (sc.out_channels if isinstance(sc, nn.Conv2d) else blk.conv1.in_channels)
    assert net.fc.in_features == net.layer3.conv2.out_channels
    # one interleaved loop per probed output size, then one for every candidate with the unpruned export
    assert len(meas.calls) == len(n["fast_counts"]) + 1 and "base" in meas.calls[-1]
    assert len(meas.calls[-1]) == len(n["ladder"]) + 1
    assert n["distill"] == {"temperature": 4.0, "alpha": 0.7, "mixup": None} and n["screened"] == []
    assert net(torch.zeros(2, *tiny_image_task.input_shape)).shape == (2, tiny_image_task.num_classes)
    # the spec replays: removed blocks as identity edits, widths from the state dict
    if n["blocks_removed"]:
        assert [e["module"] for e in res.spec["edits"] if e["edit"] == "identity"] == n["blocks_removed"]
    json.dumps(n)  # notes go into results.json


def test_structured_fast_says_when_the_target_is_out_of_reach(resnet, tiny_image_task, tmp_path) -> None:
    res, _ = _run(resnet, tiny_image_task, tmp_path, target_speedup=50.0, ratios=[0.5], max_blocks=0, tries=1,
                  importance="l2", alpha=0.0)
    n = res.notes
    assert not n["speed_target_met"] and "no candidate reached" in n["note"]
    assert n["chosen"] == max(n["ladder"], key=lambda c: c["speedup"])["candidate"]
    assert n["distill"] is None


def test_recipe_parses() -> None:
    r = load_recipe(Path(edgeslim.__file__).parent / "recipes" / "structured-fast.yaml")
    step = r.steps[0]
    assert step.name == "structured_fast" and step.config.target_speedup == 2.2  # type: ignore[attr-defined]


def test_screening_picks_on_validation(resnet, tiny_image_task, tmp_path) -> None:
    res, _ = _run(resnet, tiny_image_task, tmp_path, target_speedup=2.2, ratios=[0.0, 0.75], max_blocks=0, tries=1,
                  screen=3, screen_epochs=1, importance="l1")
    n = res.notes
    goal = 2.2 * 1.03
    reach = sorted((c for c in n["ladder"] if c["speedup"] >= goal), key=lambda c: -c["params"])
    assert len(reach) > 1 and [r["candidate"] for r in n["screened"]] == [c["candidate"] for c in reach[:3]]
    assert all(r["val_divergence"] >= 0 and r["val_loss"] > 0 for r in n["screened"])
    best = sf.rank(n["screened"], len(tiny_image_task.y_val), 1)[0]
    assert [t["candidate"] for t in n["tried"]] == [best["candidate"]] == [n["chosen"]]
    assert n["tried"][0]["val_accuracy"] == n["val_accuracy"]


def test_rank_breaks_accuracy_ties_by_divergence_from_the_teacher() -> None:
    """A validation split that saturates cannot order candidates by accuracy: within one sample (or one
    standard error of a difference) the divergence from the teacher decides; beyond it, accuracy does."""
    rows = [{"candidate": "a", "val_accuracy": 1.0, "val_divergence": 0.30},
            {"candidate": "b", "val_accuracy": 143 / 144, "val_divergence": 0.15},
            {"candidate": "c", "val_accuracy": 140 / 144, "val_divergence": 0.01},
            {"candidate": "d", "val_accuracy": 141 / 144, "val_divergence": 0.50}]
    assert [r["candidate"] for r in sf.rank(rows, 144, 1)] == ["b", "a", "d", "c"]
    assert [r["candidate"] for r in sf.rank(rows, 144, 0)] == ["a", "b", "d", "c"]
    # near 97%, one standard error of a difference on 144 samples is 2.8 samples: 2 apart tie, 4 do not
    near = [{"candidate": "w", "val_accuracy": 136 / 144, "val_divergence": 0.2},
            {"candidate": "x", "val_accuracy": 140 / 144, "val_divergence": 0.4},
            {"candidate": "y", "val_accuracy": 138 / 144, "val_divergence": 0.1}]
    assert [r["candidate"] for r in sf.rank(near, 144, 1)] == ["y", "x", "w"]
    mse = [{"candidate": "p", "val_accuracy": -0.02, "val_divergence": 0.2},
           {"candidate": "q", "val_accuracy": -0.01, "val_divergence": 0.3}]
    assert [r["candidate"] for r in sf.rank(mse, 144, 1)] == ["q", "p"]  # outside 0-1: accuracy only
