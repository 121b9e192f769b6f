"""Sensitivity curves under a time budget (`sensitivity_curves(max_seconds=)`, the pass's `curve_seconds`): the trial
order (every layer at the middle ratio, largest first, then the other ratios), `not_measured` layers getting no
ratio, the reading of partial curves in `allocate`, complete curves allocated as before, and trials on one reused
copy (the pruned modules restored in place) measuring exactly what a fresh copy per trial measures."""

from __future__ import annotations

import dataclasses

import pytest

from edgeslim import models
from edgeslim.passes import PASSES, RunContext
from edgeslim.prune import sensitivity as sens
from edgeslim.prune.sensitivity import _ratio_order, _Trials, allocate, sensitivity_curves
from edgeslim.train import TrainConfig, predict, train_model

# fixed curves and the allocation the code before the budget gave for them (copied from its output)
CURVES = {"mode": "structured", "baseline": 0.9, "ratios": [0.25, 0.5, 0.75], "layers": [
    {"layer": "a", "weights": 1000, "accuracy": {"0.25": 0.9, "0.5": 0.88, "0.75": 0.7}},
    {"layer": "b", "weights": 4000, "accuracy": {"0.25": 0.85, "0.5": 0.6, "0.75": 0.3}},
    {"layer": "c", "weights": 500, "accuracy": {"0.25": 0.9, "0.5": 0.9, "0.75": 0.89}},
    {"layer": "d", "weights": 2000, "accuracy": {"0.25": 0.89, "0.5": 0.86, "0.75": 0.8}},
    {"layer": "h", "weights": 300, "accuracy": {"0.25": 0.0, "0.5": 0.0, "0.75": 0.0}, "changes_outputs": True}]}
BEFORE = {(0.3, 0.95): {"a": 0.4989, "b": 0.1297, "c": 0.9479, "d": 0.3792, "h": 0.0},
          (0.5, 0.75): {"a": 0.6242, "b": 0.317, "c": 0.7431, "d": 0.7431, "h": 0.0},
          (0.6, 0.95): {"a": 0.6892, "b": 0.3596, "c": 0.9489, "d": 0.9489, "h": 0.0}}


class _Clock:
    """perf_counter that advances 1 s per call: with max_seconds k + 0.5, exactly k trials run (one check each)."""

    def __init__(self) -> None:
        self.t = -1.0

    def perf_counter(self) -> float:
        self.t += 1.0
        return self.t


def _trained(arch, task, epochs=1, **kw):
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **kw)
    m = models.build_model(spec)
    train_model(m, task, TrainConfig(epochs=epochs), quiet=True)
    return m, spec


def test_complete_curves_allocate_as_before():
    for (target, max_ratio), want in BEFORE.items():
        assert allocate(CURVES, target, max_ratio) == want


def test_ratio_order_middle_first_then_widest_gap():
    assert _ratio_order([0.25, 0.5, 0.75]) == [0.5, 0.75, 0.25]
    assert _ratio_order([0.3, 0.6]) == [0.6, 0.3]
    assert _ratio_order([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])[:4] == [0.5, 0.9, 0.7, 0.3]


def test_partial_curves_are_read_soundly():
    """A layer known at 0.5 only: linear from 0 below it, and past it as bad as the worst measured drop."""
    curves = {"baseline": 0.9, "ratios": [0.25, 0.5, 0.75], "not_measured": ["z"], "layers": [
        {"layer": "a", "weights": 1000, "accuracy": {"0.25": 0.9, "0.5": 0.89, "0.75": 0.85}},
        {"layer": "b", "weights": 1000, "accuracy": {"0.5": 0.9}}]}
    alloc = allocate(curves, 0.5, 0.75)
    assert alloc["z"] == 0.0  # not measured: no ratio, and its weights are not in the mean
    assert alloc["b"] == 0.5  # loses nothing at 0.5, but nothing is known past it
    assert alloc["a"] == 0.5
    # the old reading (flat past 0.5) would have given b 0.75 and a 0.25 here
    curves["layers"][1]["accuracy"]["0.75"] = 0.9
    assert allocate(curves, 0.5, 0.75) == {"a": 0.25, "b": 0.75, "z": 0.0}
    # below the only measured ratio: linear between the baseline and it
    one = {"baseline": 1.0, "ratios": [0.5, 0.75], "layers": [
        {"layer": "p", "weights": 100, "accuracy": {"0.5": 0.8}},
        {"layer": "q", "weights": 100, "accuracy": {"0.5": 0.9, "0.75": 0.9}}]}
    got = allocate(one, 0.5, 0.75)  # p: drop 0.1 at 0.25 (half of 0.2), q: 0.1 up to 0.75
    assert got == {"p": 0.25, "q": 0.75}
    assert allocate({"baseline": 1.0, "ratios": [0.5], "layers": [], "not_measured": ["p", "q"]}, 0.5) == \
        {"p": 0.0, "q": 0.0}


def test_budget_orders_trials_and_lists_the_unmeasured(tiny_image_task, monkeypatch):
    task = tiny_image_task
    m, _ = _trained("lenet300", task)  # fc2 30000 weights, fc1 19200, fc3 400
    full = sensitivity_curves(m, task, [0.3, 0.6, 0.9], "unstructured")
    assert full["stopped_by_budget"] is False and "not_measured" not in full
    acc = {r["layer"]: r["accuracy"] for r in full["layers"]}
    monkeypatch.setattr(sens, "time", _Clock())
    part = sensitivity_curves(m, task, [0.3, 0.6, 0.9], "unstructured", max_seconds=4.5)
    assert part["stopped_by_budget"] is True and part["max_seconds"] == 4.5
    got = {r["layer"]: r["accuracy"] for r in part["layers"]}
    assert {k: set(v) for k, v in got.items()} == {"fc1": {"0.6"}, "fc2": {"0.6", "0.9"}, "fc3": {"0.6"}}
    assert all(got[k][r] == acc[k][r] for k in got for r in got[k])  # the same trials as the complete run
    monkeypatch.setattr(sens, "time", _Clock())
    part = sensitivity_curves(m, task, [0.3, 0.6, 0.9], "unstructured", max_seconds=2.5)
    assert [r["layer"] for r in part["layers"]] == ["fc1", "fc2"] and part["not_measured"] == ["fc3"]
    assert [r["weights"] for r in part["layers"]] == [19200, 30000] and part["not_measured_weights"] == 400
    alloc = allocate(part, 0.5)
    assert alloc["fc3"] == 0.0
    assert (alloc["fc1"] * 19200 + alloc["fc2"] * 30000) / 49200 == pytest.approx(0.5, abs=0.01)


def test_pass_with_no_time_prunes_nothing_and_says_so(tiny_image_task, tmp_path, capsys):
    task = tiny_image_task
    m, spec = _trained("lenet300", task)
    ctx = RunContext(stage_dir=tmp_path, spec=spec, finetune=TrainConfig(epochs=0), quiet=False)
    cfg = PASSES["sensitivity_prune"].config(target=0.5, ratios=[0.3, 0.6], curve_seconds=0)
    res = PASSES["sensitivity_prune"].fn(m, task, cfg, ctx)
    assert res.notes["not_measured"] == ["fc1", "fc2", "fc3"]
    assert res.notes["allocation"] == {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}
    assert res.notes["curve_budget_stopped"] is True and res.notes["curve_budget_s"] == 0
    assert res.notes["weight_sparsity"] < 0.01
    out = capsys.readouterr().out
    assert "3 layer(s) not measured within curve_seconds 0 s" in out
    assert "Not measured within the 0 s budget (no ratio allocated): fc1, fc2, fc3" in (tmp_path / "sensitivity.md").read_text()


@pytest.mark.parametrize("arch,kw", [("resnet8", {"width": 4}), ("mobilenetv1", {"alpha": 0.125})])
def test_reused_copy_measures_what_fresh_copies_measure(arch, kw, tiny_image_task, monkeypatch):
    """Structured trials on one copy whose pruned modules are restored in place give exactly the figures of a
    fresh deep copy per trial (the code before)."""
    m, _ = _trained(arch, tiny_image_task, **kw)
    # the original's outputs as targets: the score is a mean cosine, which any change to the trial model moves
    task = dataclasses.replace(tiny_image_task, y_val=predict(m, tiny_image_task.x_val))
    reused = sensitivity_curves(m, task, [0.25, 0.75], "structured")
    copies = []
    real_get = _Trials.get

    def fresh(self):
        self.model = None
        got = real_get(self)
        copies.append(id(got))
        return got

    monkeypatch.setattr(_Trials, "get", fresh)
    fresh_curves = sensitivity_curves(m, task, [0.25, 0.75], "structured")
    assert len(copies) == 2 * len(reused["layers"]) >= 4
    assert reused["layers"] == fresh_curves["layers"]
    assert reused["baseline"] == pytest.approx(1.0)
    at75 = [r["accuracy"]["0.75"] for r in reused["layers"]]
    assert all(a < 1.0 for a in at75) and min(at75) < 0.99  # every trial changed the model, some a lot
