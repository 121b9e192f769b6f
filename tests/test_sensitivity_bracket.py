"""`sensitivity_prune: {search: bracket}`: the next ratio scale aims at the fidelity budget from the last score,
then narrows between the most pruned try that met it and the least pruned that did not; the most pruned passing
try is kept."""

from __future__ import annotations

import copy

import pytest

from edgeslim.passes import PASSES
from edgeslim.passes.base import RunContext
from edgeslim.passes.sensitivity_prune import next_scale
from edgeslim.train import TrainConfig, evaluate
from tests.test_reconstruct import setup  # noqa: F401 - the fixture


def test_next_scale_aims_at_the_budget_then_narrows():
    assert next_scale([(1.0, 0.995)], 0.99, 0.5) is None  # the full ratios met it
    # loss 0.05 at scale 1, 0.01 allowed: aim at 80% of it -> 0.16
    assert next_scale([(1.0, 0.95)], 0.99, 0.5) == pytest.approx(0.16)
    assert next_scale([(1.0, 0.2)], 0.99, 0.5) == pytest.approx(0.1)  # never below 0.1x
    assert next_scale([(1.0, 0.985)], 0.99, 0.5) == pytest.approx(0.5)  # nor above `backoff`x
    assert next_scale([(1.0, 0.95), (0.16, 0.995)], 0.99, 0.5) == pytest.approx(0.4)  # geometric middle
    assert next_scale([(1.0, 0.95), (0.16, 0.995), (0.4, 0.98), (0.25, 0.991), (0.3, 0.989)], 0.99, 0.5) is None


def test_bracket_keeps_the_most_pruned_try_that_meets_the_budget(setup, tmp_path):  # noqa: F811
    teacher, task = setup
    ctx = RunContext(stage_dir=tmp_path, spec={}, finetune=TrainConfig(epochs=0), quiet=True,
                     teacher_loader=lambda: copy.deepcopy(teacher))
    base = dict(target=0.7, mode="structured", ratios=[0.5, 0.75], max_ratio=0.9, curve_samples=8, max_tries=4,
                search="bracket")
    first = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task,
                                           PASSES["sensitivity_prune"].config(**base, min_val_score=0.9999), ctx)
    s1 = first.notes["tries"][0]["val_score"]
    assert s1 < 0.9999
    budget = 1 - 0.5 * (1 - s1)  # half the first try's loss: the full ratios fail it
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task,
                                         PASSES["sensitivity_prune"].config(**base, min_val_score=budget), ctx)
    tries = res.notes["tries"]
    assert tries[0]["scale"] == 1.0 and tries[0]["val_score"] == pytest.approx(s1)
    assert tries[1]["scale"] == pytest.approx(max(0.1, min(0.5, 0.8 * 0.5)), abs=1e-3)
    passing = [t for t in tries if t["val_score"] >= budget]
    assert len(passing) >= 2 and len(tries) == 4  # narrowed upwards after the first pass
    chosen = max(passing, key=lambda t: t["scale"])
    assert chosen["try"] > 2 and res.notes["budget_met"] and res.notes["chosen_try"] == chosen["try"]
    assert evaluate(res.model, task.x_val, task.y_val) == pytest.approx(chosen["val_score"])


def test_a_passing_try_that_saves_too_little_keeps_the_unpruned_model(setup, tmp_path):  # noqa: F811
    teacher, task = setup
    ctx = RunContext(stage_dir=tmp_path, spec={}, finetune=TrainConfig(epochs=0), quiet=True,
                     teacher_loader=lambda: copy.deepcopy(teacher))
    cfg = PASSES["sensitivity_prune"].config(target=0.7, mode="structured", ratios=[0.5, 0.75], max_ratio=0.9,
                                             curve_samples=8, max_tries=2, search="bracket", min_val_score=0.5,
                                             min_macs_saved=0.99)
    res = PASSES["sensitivity_prune"].fn(copy.deepcopy(teacher), task, cfg, ctx)
    assert res.notes["budget_met"] and res.notes["tries"][0]["macs_after"] < res.notes["macs_before"]
    assert "min_macs_saved" in res.notes["kept_unpruned"] and res.notes["chosen_try"] == 0
    assert res.notes["macs_after"] == res.notes["macs_before"]
    assert evaluate(res.model, task.x_val, task.y_val) == pytest.approx(1.0)
