"""A run's measurements: the final table times every stage together (interleaved) so it agrees with the
passes' own comparisons; the device is part of the run (recipe `device:` or --device, in run.json) and a
resume on another device re-measures the device figures only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim import models
from edgeslim.data.task import Task, make_task
from edgeslim.errors import EdgeslimError
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import parse_recipe

INT8 = ("version: 1\n{device}passes:\n  - quantize_int8: {{candidates: [u8s8-rr-pc, u8s8-rr], max_accuracy_drop: 100, "
        "calibration_samples: 32}}\n")


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Task]:
    """An MLP with two 1024-wide layers on 1x32x32 inputs: at batch 1 its FP32 GEMVs are memory-bound, so INT8
    (4x fewer weight bytes, u8s8 reduce-range kernels) runs several times faster in ONNX Runtime."""
    rng = np.random.default_rng(0)
    x, y = rng.random((260, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, 260)
    task = make_task("wide", x[:200], y[:200], x[200:], y[200:], seed=0)
    torch.manual_seed(0)
    spec = models.make_spec("lenet300", task.input_shape, 10, h1=1024, h2=1024)
    folder = tmp_path_factory.mktemp("wide") / "base"
    models.save_model(folder, models.build_model(spec), spec)
    return folder, task


def test_table_and_int8_pass_agree_in_direction(wide: tuple[Path, Task], tmp_path: Path) -> None:
    base_dir, task = wide
    res = run_recipe(parse_recipe(INT8.format(device="")), base_dir, task, tmp_path / "run", quiet=True)
    base, q = res["stages"]
    # the per-layer path (default) names its candidates; the format path (per_layer: false) its formats
    chosen = next(r for r in q["notes"]["tried"] if q["notes"]["format"].split()[0] == r.get("candidate")
                  or q["notes"]["format"] == f"QDQ {r.get('format')}")
    pass_ratio = chosen["fp32_latency_ms_p50"] / chosen["latency_ms_p50"]  # the pass's interleaved comparison
    table_ratio = base["latency_ms_p50"] / q["latency_ms_p50"]  # the run's final interleaved timing
    assert pass_ratio > 1.3 and table_ratio > 1.3  # INT8 is faster here, and both say so
    assert q["speedup_vs_baseline"] == pytest.approx(table_ratio, rel=0.01)
    for s in (base, q):  # the stage's own figure, timed alone when it finished, is kept beside the table's
        assert s["latency_ms_p50_alone"] > 0 and s["latency_timing"].startswith("interleaved: 2 stages")
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"{table_ratio:.2f}x latency speed-up" in report or f"{q['speedup_vs_baseline']:.2f}x" in report
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["stages"][1]
    assert saved["latency_ms_p50"] == q["latency_ms_p50"] and saved["speedup_vs_baseline"] > 1.3


def test_device_is_part_of_the_run_and_a_resume_remeasures_it(wide: tuple[Path, Task], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    base_dir, task = wide
    out = tmp_path / "run"
    recipe = parse_recipe(INT8.format(device="device: cortex-m4\n"))
    res = run_recipe(recipe, base_dir, task, out, quiet=True)
    assert json.loads((out / "run.json").read_text())["device"] == "cortex-m4" and res["device"] == "cortex-m4"
    assert all(s["deploy_device"] == "cortex-m4" for s in res["stages"])
    stage = out / "stages" / "01_quantize_int8"
    onnx_bytes, seconds = (stage / "model.onnx").read_bytes(), res["stages"][1]["seconds"]
    # the same run on another device (--device): nothing is recomputed but the device figures
    res2 = run_recipe(recipe, base_dir, task, out, quiet=True, device="cortex-m7")
    assert json.loads((out / "run.json").read_text())["device"] == "cortex-m7" == res2["device"]
    for before, after in zip(res["stages"], res2["stages"]):
        assert after["deploy_device"] == "cortex-m7" and after["energy_mj"] != before["energy_mj"]
        assert after["energy_method"] == "estimated:uncalibrated@cortex-m7"
        assert after["accuracy"] == before["accuracy"] and after["notes"] == before["notes"]
    assert (stage / "model.onnx").read_bytes() == onnx_bytes and res2["stages"][1]["seconds"] == seconds
    assert json.loads((stage / "metrics.json").read_text())["deploy_device"] == "cortex-m7"
    # the recipe's device wins over EDGESLIM_DEVICE; --device wins over both
    monkeypatch.setenv("EDGESLIM_DEVICE", "host")
    res3 = run_recipe(recipe, base_dir, task, out, quiet=True)
    assert res3["device"] == "cortex-m4"
    with pytest.raises(EdgeslimError, match="unknown device 'nope'"):
        run_recipe(recipe, base_dir, task, out, quiet=True, device="nope")


def test_recipe_device_and_measure_keys() -> None:
    r = parse_recipe("version: 1\ndevice: cortex-m4\nmeasure: {batches: [1, 64]}\npasses:\n  - quantize_fp16: {}\n")
    assert r.device == "cortex-m4" and r.batches == (1, 64)
    assert r.digest == parse_recipe("version: 1\npasses:\n  - quantize_fp16: {}\n").digest  # not the run's identity
    with pytest.raises(EdgeslimError, match=r"<recipe>:2: device: unknown device 'nope'"):
        parse_recipe("version: 1\ndevice: nope\npasses:\n  - quantize_fp16: {}\n")
    with pytest.raises(EdgeslimError, match=r"<recipe>:2: measure.batches must be a list"):
        parse_recipe("version: 1\nmeasure: {batches: [0]}\npasses:\n  - quantize_fp16: {}\n")
    with pytest.raises(EdgeslimError, match=r"'measure_batches' moved to the recipe's top level"):
        parse_recipe("version: 1\npasses:\n  - structured_prune: {measure_batches: [1, 64]}\n")
