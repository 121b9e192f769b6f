"""A labelled run (`edgeslim run` on a zoo model with a task): INT8 calibration reads the training split only, and
every stage records its fidelity to the baseline stage's ONNX on the test split, naming the split (issue 24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.session import session
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import parse_recipe

INT8 = ("version: 1\npasses:\n  - quantize_int8: {candidates: [u8s8-rr-pc], max_accuracy_drop: 100, "
        "calibration_samples: 64}\n")


def test_calibration_never_sees_a_test_row_and_fidelity_is_on_test(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task("digits", seed=0)
    torch.manual_seed(0)
    spec = models.make_spec("lenet300", task.input_shape, 10, h1=32, h2=16)
    base = tmp_path / "base"
    models.save_model(base, models.build_model(spec), spec)

    seen: list[np.ndarray] = []  # every array the quantizer's calibration feeds were cut from
    real = oq.array_feeds

    def recording(name: str, x: np.ndarray, batch: int = 16, **kw) -> list:
        seen.append(np.array(x, copy=True))
        return real(name, x, batch, **kw)

    monkeypatch.setattr(oq, "array_feeds", recording)
    res = run_recipe(parse_recipe(INT8), base, task, tmp_path / "run", quiet=True, report=False)

    assert len(seen) == 1 and len(seen[0]) == 64
    test_rows = {r.tobytes() for r in task.x_test}
    train_rows = {r.tobytes() for r in task.x_train}
    calib_rows = [r.tobytes() for r in seen[0].astype(np.float32)]
    assert not any(r in test_rows for r in calib_rows)  # disjoint from the reported split
    assert all(r in train_rows for r in calib_rows)  # and drawn from the training split

    b, q = res["stages"]
    for s in (b, q):
        f = s["fidelity"]
        assert f["split"] == "test" and f["samples"] == len(task.x_test) == 360
        assert f["reference"] == "00_baseline" and f["samples_compared"] == 360
        assert s["accuracy_split"] == "test" and s["accuracy_samples"] == 360
    assert b["fidelity"]["cosine"] == pytest.approx(1.0) and b["fidelity"]["max_abs_err"] == 0.0
    assert b["fidelity"]["top1_agreement"] == 1.0
    fq = q["fidelity"]
    assert 0.95 < fq["cosine"] < 1.0 and 0.0 < fq["max_abs_err"] and 0.8 <= fq["top1_agreement"] <= 1.0

    # the figure is the two files' outputs on the test split, recomputed here
    def logits(p: Path) -> np.ndarray:
        s = session(p)
        return s.run(None, {s.get_inputs()[0].name: task.x_test})[0]

    run = tmp_path / "run"
    ref, got = logits(run / b["onnx"]), logits(run / q["onnx"])
    assert fq["max_abs_err"] == pytest.approx(float(np.abs(ref - got).max()), rel=1e-5)
    assert fq["top1_agreement"] == pytest.approx(float((ref.argmax(1) == got.argmax(1)).mean()))
