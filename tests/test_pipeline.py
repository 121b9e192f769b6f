"""The pipeline end to end on a tiny model: results.json contract, atomic stages, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from edgeslim import api, models
from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.pipeline import RESULT_FIELDS, run_recipe
from edgeslim.recipe import parse_recipe
from edgeslim.train import TrainConfig

BOOM = {"armed": False}


class _Boom(PassConfig):
    pass


@register("_test_interrupt", _Boom)
def _interrupt(model: nn.Module | None, task: Task, cfg: _Boom, ctx: RunContext) -> PassResult:
    """Simulates a run killed in the middle of a stage."""
    (ctx.stage_dir / "partial.bin").write_bytes(b"half")
    if BOOM["armed"]:
        raise KeyboardInterrupt
    return PassResult(model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_image_task) -> Path:
    out = tmp_path_factory.mktemp("m") / "lenet5"
    api.train("lenet5", tiny_image_task, out, TrainConfig(epochs=10), quiet=True)
    return out


RECIPE = """version: 1
finetune: {epochs: 1}
passes:
  - magnitude_prune: {sparsity: 0.5}
  - _test_interrupt: {}
  - quantize_int8: {calibration_samples: 32}
"""


def test_run_results_contract(trained, tiny_image_task, tmp_path):
    res = run_recipe(parse_recipe(RECIPE), trained, tiny_image_task, tmp_path / "run", quiet=True)
    stages = res["stages"]
    assert [s["name"] for s in stages] == ["baseline", "magnitude_prune", "_test_interrupt", "quantize_int8"]
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    for s in on_disk["stages"]:
        for f in RESULT_FIELDS:
            assert f in s, f
        assert 0.0 <= s["accuracy"] <= 1.0
        assert (tmp_path / "run" / s["onnx"]).is_file()
        assert s["latency_ms_p50"] > 0
    base, pruned, quant = stages[0], stages[1], stages[3]
    assert base["accuracy"] > 0.8  # the tiny task is easy
    assert pruned["nonzero_params"] < 0.6 * base["nonzero_params"]
    assert quant["size_bytes"] < 0.5 * base["size_bytes"]  # INT8 weights
    # each stage records the carry it ran with; a later pass's carry never shows up in an earlier stage
    assert [s["carry"] for s in on_disk["stages"]] == [{}, {"keep_sparsity": True}, {"keep_sparsity": True},
                                                       {"keep_sparsity": True}]
    assert (tmp_path / "run" / "report.md").read_text().startswith("# edgeslim report")


def test_resume_after_interrupt(trained, tiny_image_task, tmp_path):
    run = tmp_path / "run"
    BOOM["armed"] = True
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(RECIPE), trained, tiny_image_task, run, quiet=True)
    stages = sorted(p.name for p in (run / "stages").iterdir())
    assert stages == ["00_baseline", "01_magnitude_prune"]  # no half-written stage folder, no temp dirs
    assert not (run / "results.json").exists()
    first = (run / "stages" / "01_magnitude_prune" / "metrics.json").read_text()
    BOOM["armed"] = False
    res = run_recipe(parse_recipe(RECIPE), trained, tiny_image_task, run, quiet=True)
    assert len(res["stages"]) == 4
    # the finished stage was reused, not recomputed
    assert (run / "stages" / "01_magnitude_prune" / "metrics.json").read_text() == first
    kept = json.loads(first)  # the run's end adds comparison fields (behaviour, verdict, ...) to results.json only
    timed = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean")  # re-timed at the end
    assert {k: res["stages"][1][k] for k in kept if k not in timed} == {k: v for k, v in kept.items() if k not in timed}
    # the table's latency is the final interleaved timing; the stage's own (alone) figure is kept beside it
    assert res["stages"][1]["latency_ms_p50_alone"] == kept["latency_ms_p50"]
    assert res["stages"][1]["latency_timing"].startswith("interleaved: 4 stages")


def test_different_run_in_same_folder_refused(trained, tiny_image_task, tmp_path):
    run = tmp_path / "run"
    run_recipe(parse_recipe("version: 1\npasses:\n  - quantize_int8\n"), trained, tiny_image_task, run, quiet=True)
    with pytest.raises(EdgeslimError, match="holds a different run.*recipe_digest"):
        run_recipe(parse_recipe(RECIPE), trained, tiny_image_task, run, quiet=True)


def test_shape_mismatch_is_clear(trained, tiny_seq_task, tmp_path):
    with pytest.raises(EdgeslimError, match=r"expects inputs of shape \(1, 8, 8\) but task 'tinyseq'"):
        run_recipe(parse_recipe(RECIPE), trained, tiny_seq_task, tmp_path / "r", quiet=True)


def test_nan_training_is_one_clear_error(tiny_image_task, tmp_path):
    import numpy as np

    bad = Task(**{**tiny_image_task.__dict__})
    bad.x_train = tiny_image_task.x_train.copy()
    bad.x_train[0, 0, 0, 0] = np.nan
    with pytest.raises(EdgeslimError, match=r"training diverged.*epoch 1"):
        api.train("lenet300", bad, tmp_path / "m", TrainConfig(epochs=1, batch_size=512), quiet=True)


def test_model_folder_roundtrip_accuracy(trained, tiny_image_task):
    from edgeslim.train import evaluate

    net, spec = models.load_model(trained)
    saved = json.loads((trained / "spec.json").read_text())["extra"]["metrics"]["test_accuracy"]
    assert evaluate(net, tiny_image_task.x_test, tiny_image_task.y_test) == pytest.approx(saved)


def test_training_checkpoint_resumes(tiny_image_task, tmp_path):
    """A training killed after epoch 2 resumes at epoch 3 and ends exactly where an unbroken run does."""
    import torch

    from edgeslim.train import train_model

    cfg = TrainConfig(epochs=4, seed=3)
    ref = models.build_model(models.make_spec("lenet300", (1, 8, 8), 4))
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    train_model(ref, tiny_image_task, cfg, quiet=True)

    ck = tmp_path / "ck.pt"
    net = models.build_model(models.make_spec("lenet300", (1, 8, 8), 4))
    net.load_state_dict(start)

    def die(model, epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    from edgeslim.train import Hooks

    with pytest.raises(KeyboardInterrupt):
        train_model(net, tiny_image_task, cfg, Hooks(after_epoch=[die]), quiet=True, checkpoint=ck)
    assert ck.exists()
    net2 = models.build_model(models.make_spec("lenet300", (1, 8, 8), 4))
    hist = train_model(net2, tiny_image_task, cfg, quiet=True, checkpoint=ck)
    assert hist["history"][0]["epoch"] == 1 and len(hist["history"]) == 4
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, net2.state_dict()[k], atol=1e-5), k


def test_report_flags_a_stage_slower_than_the_one_before():
    from edgeslim.report.results import report_md

    base = {"name": "baseline", "accuracy": 0.9, "size_bytes": 100, "latency_ms_p50": 0.010}
    q = {"name": "quantize_int8", "accuracy": 0.9, "size_bytes": 30, "latency_ms_p50": 0.015,
         "notes": {"tried": [1, 2], "why": "fastest"}}
    md = report_md({"stages": [base, q]})
    assert "`quantize_int8`: 0.0150 ms vs 0.0100 ms p50" in md
    assert "3.33x smaller on disk, 0.67x latency speed-up" in md
    assert "tried=[2 entries]" in md
    assert "Slower than" not in report_md({"stages": [base, {**q, "latency_ms_p50": 0.0105}]})
    # the table itself says it, also when the pass's own interleaved verdict found the stage slower
    assert "| quantize_int8 (slower) |" in md
    said = {**q, "latency_ms_p50": 0.0095, "notes": {"slower_than_fp32": "w8 is 0.97x FP32 speed"}}
    assert "| quantize_int8 (slower) |" in report_md({"stages": [base, said]})
    assert "| quantize_int8 |" in report_md({"stages": [base, {**q, "latency_ms_p50": 0.0105}]})


def test_measure_onnx_file_counts_macs_from_the_graph(trained, tiny_image_task, tmp_path):
    from edgeslim.deploy.export import export_onnx
    from edgeslim.models.counts import count_macs

    net, spec = models.load_model(trained)
    export_onnx(net, tiny_image_task.input_shape, tmp_path / "m.onnx")
    row = api.measure([tmp_path / "m.onnx"], runs=20)[0]
    assert row["macs"] == count_macs(net, tiny_image_task.input_shape)
