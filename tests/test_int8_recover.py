"""`quantize_int8: {recover: ...}`: when the INT8 plan keeps layers float for fidelity, a quant-aware copy
(int8 fake quantization, function matching from the original) is planned again and kept only when faithful and
faster; its weights lie on the int8 grid; nothing is left in the stage folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import main_inproc
from test_run_inputs import _inputs, onnx_model  # noqa: F401  (a fixture)

from edgeslim.data import Task
from edgeslim.distill.matching import Matching
from edgeslim.passes.base import RunContext
from edgeslim.passes.int8_recover import quant_aware_copy
from edgeslim.passes.quantize_int8 import QuantizeInt8

RECOVER = """version: 1
passes:
  - quantize_int8: {min_cosine: 0.99999, recover: {max_steps: 20, eval_every: 10, batch_size: 8}}
"""


def _run_recover(model: Path, tmp_path: Path, out: Path) -> list[dict]:
    """`run` of the RECOVER recipe on the fixture model and 120 inputs; its stages from results.json."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECOVER)
    code, _, err = main_inproc("run", str(recipe), "--model", str(model), "--inputs",
                               str(_inputs(tmp_path / "x.npz", 120)), "-o", str(out))
    assert code == 0, err
    return json.loads((out / "results.json").read_text())["stages"]


def test_recover_plans_a_quant_aware_copy_and_keeps_the_faster_faithful_one(onnx_model, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    from edgeslim.passes import int8_recover
    from edgeslim.quant import int8_plan

    monkeypatch.setattr(int8_recover, "MIN_FULL_SPEEDUP", 0.0)  # a tiny model's full INT8 may run slower than FP32
    plans: list[tuple[list, list]] = []  # (calibration feeds, judged feeds) of each INT8 plan
    build = int8_plan.build_plan

    def spy(model, feeds, ref, *a, **kw):  # type: ignore[no-untyped-def]
        plans.append((feeds, kw.get("judge_feeds") or feeds))
        return build(model, feeds, ref, *a, **kw)

    monkeypatch.setattr(int8_plan, "build_plan", spy)
    out = tmp_path / "run"
    base, int8 = _run_recover(onnx_model, tmp_path, out)
    rec = int8["notes"]["recover"]
    assert len(plans) == 2 and rec["plan_judged_on"].endswith("validation rows")

    def rows(fs: list) -> set[bytes]:
        return {r.tobytes() for f in fs for a in f.values() for r in np.asarray(a)}

    # the retrained copy's plan judges on rows it was not fitted on: none of them is a calibration (training) row
    calib, judged = rows(plans[1][0]), rows(plans[1][1])
    assert judged and not calib & judged
    # a target cosine of 0.99999 makes the plan keep layers float for fidelity: the recovery ran
    assert rec["plan_fidelity_floats"] >= 1 and rec["fake_quantized_layers"] == 3
    assert rec["steps"] == 20 or (rec["steps"] == 0 and rec["stopped_by"] == "nothing to recover")
    assert rec["kept"] in ("plan", "recovered") and rec["kept_why"]
    lo, hi = rec["time_ratio_recovered_vs_plan"][1:]
    assert lo <= rec["time_ratio_recovered_vs_plan"][0] <= hi
    if rec["kept"] == "recovered":  # kept only when faster with confidence and faithful
        assert hi < 1.0
    assert int8["fidelity"]["cosine"] > 0.98 and int8["fidelity"]["split"] == "test"
    stage = out / "stages" / "01_quantize_int8"
    assert not (stage / "recover").exists() and not (stage / "candidates").exists()


def test_quant_aware_copy_has_weights_on_the_int8_grid():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 4))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    task = Task("t", x[:32], y[:32], x[32:40], y[32:40], x[40:], y[40:], 0, metric="fidelity")
    cfg = QuantizeInt8(calibration_samples=16, recover=Matching(max_steps=10, eval_every=5, batch_size=8))
    ctx = RunContext(stage_dir=Path("."), spec={}, finetune=None, teacher_loader=lambda: net, quiet=True)  # type: ignore[arg-type]
    baked, notes = quant_aware_copy(net, task, cfg, ctx)
    assert notes["fake_quantized_layers"] == 2 and notes["steps"] == 10
    for layer in (baked[0], baked[3]):
        w = layer.weight.detach().flatten(1)
        scale = w.abs().amax(1, keepdim=True) / 127
        codes = w / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3)  # per output channel, symmetric int8
    assert net[0].weight.data_ptr() != baked[0].weight.data_ptr()  # the stage's model is left as it was


def test_recover_is_skipped_when_full_int8_is_no_faster(onnx_model, tmp_path):  # noqa: F811
    from edgeslim.passes import int8_recover

    int8 = _run_recover(onnx_model, tmp_path, tmp_path / "run")[-1]
    full = next(r for r in int8["notes"]["tried"] if r["candidate"] == "int8-full")
    rec = int8["notes"]["recover"]
    if full["speedup_vs_fp32"] <= int8_recover.MIN_FULL_SPEEDUP:
        assert rec["skipped"].startswith("full INT8 ran no faster than FP32")
    else:
        assert rec["kept"] in ("plan", "recovered")


@pytest.mark.parametrize("chosen", ["int8-full", "int8-mixed"])
def test_only_fidelity_floats_count(chosen):
    from types import SimpleNamespace

    from edgeslim.passes.int8_recover import fidelity_floats

    plan = SimpleNamespace(float_units={"a": "fidelity: alone in INT8 it costs 0.03", "b": "slower in INT8 (3 vs 1 us)"})
    r = SimpleNamespace(chosen=chosen, plan=plan)
    assert fidelity_floats(r) == ([] if chosen == "int8-full" else ["a"])  # type: ignore[arg-type]
