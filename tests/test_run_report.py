"""A run's report: behaviour fields (by hand), the device verdict, per-layer structure, interleaved
timing, report.html with every plot decoding in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from chromium_helpers import images_loaded, needs_chromium

from edgeslim import api
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import parse_recipe
from edgeslim.report.behaviour import compare_behaviour, ece, per_class_accuracy
from edgeslim.train import TrainConfig


def test_ece_by_hand() -> None:
    # 4 samples: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right), 2 classes
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    # bin (0.867, 0.933]: 2 samples, accuracy 0.5, confidence 0.9 -> 0.5 x 0.4
    # bin (0.533, 0.6]:   2 samples, accuracy 1.0, confidence 0.6 -> 0.5 x 0.4
    assert ece(p, y) == pytest.approx(0.4)
    assert ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == pytest.approx(0.0)


def test_flips_and_per_class_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    base = np.eye(3)[[0, 0, 1, 2, 2, 2]] * 5.0  # wrong on sample 3
    stage = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 5.0  # flips 1 (right->wrong), 3 (wrong->right), 5 (right->wrong)
    got = compare_behaviour((base, y), (stage, y))
    assert got["flipped"] == 3 and got["flipped_to_wrong"] == 2 and got["flipped_to_right"] == 1
    assert got["flipped_both_wrong"] == 0
    assert got["per_class_accuracy"] == [0.5, 1.0, 0.5]
    assert got["per_class_accuracy_delta"] == [-0.5, 0.5, -0.5]
    assert {e["index"] for e in got["flipped_examples"]} == {1, 3, 5}
    assert per_class_accuracy(np.array([0, 0]), np.array([0, 0]), 3) == [1.0, None, None]


RECIPE = """version: 1
finetune: {epochs: 1}
passes:
  - structured_prune: {ratio: 0.5}
  - quantize_int8: {calibration_samples: 32}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_image_task) -> Path:
    root = tmp_path_factory.mktemp("rr")
    api.train("lenet5", tiny_image_task, root / "m", TrainConfig(epochs=4), quiet=True)
    run_recipe(parse_recipe(RECIPE), root / "m", tiny_image_task, root / "run", quiet=True)
    return root / "run"


def test_stages_carry_behaviour_verdict_layers_and_interleaved_timing(run: Path, tiny_image_task) -> None:
    stages = json.loads((run / "results.json").read_text())["stages"]
    base, pruned, q = stages
    for s in stages:
        z = np.load(run / s["predictions"])
        assert z["logits"].shape == (len(tiny_image_task.y_test), 4)
        assert float((z["logits"].argmax(1) == z["labels"]).mean()) == pytest.approx(s["accuracy"], abs=1e-6)
        assert 0 <= s["ece"] <= 1 and s["latency_ms_p50_interleaved"] > 0
        assert s["device_verdict"]["device"] == "cortex-m4" and s["device_verdict"]["energy_mj"] > 0
        assert s["device_verdict"]["battery"]["lifetime_days"] > 0
    assert base["flipped"] == 0 and base["speedup_interleaved"] == 1.0
    assert all(d == 0 for d in base["per_class_accuracy_delta"])
    # flips are consistent with the accuracy change: (right->wrong) - (wrong->right) = drop in correct samples
    n = len(tiny_image_task.y_test)
    for s in (pruned, q):
        assert s["flipped_to_wrong"] - s["flipped_to_right"] == round((base["accuracy"] - s["accuracy"]) * n)
    # structured pruning halves the channels of the hidden layers; INT8 stores 8-bit weights
    assert [r["kept"] for r in pruned["layers"][:2]] == [0.5, 0.5] and pruned["layers"][-1]["kept"] == 1.0
    assert {r["weight_bits"] for r in q["layers"]} == {8} and {r["weight_bits"] for r in base["layers"]} == {32}
    assert q["device_verdict"]["flash_bytes"] < base["device_verdict"]["flash_bytes"]


def test_report_html_is_self_contained(run: Path) -> None:
    page = (run / "report.html").read_text()
    n = page.count("<img ")
    assert n >= 8  # 3 trade-offs, 2 energy, 2 per-layer, per-class (+ flipped examples when any)
    assert page.count('src="data:image/png;base64,') == n and not re.search(r"(src|href)=\"https?:", page)
    for text in ("Device verdict: cortex-m4", "What compression changed in behaviour", "ECE", "structured_prune"):
        assert text in page, text
    md = (run / "report.md").read_text()
    assert "## Device verdict: cortex-m4" in md and "| structured_prune |" in md
    assert all((run / "plots" / f"{k}.png").is_file() for k in ("acc_size", "acc_latency", "acc_energy"))


@needs_chromium
def test_run_report_images_load_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    imgs, ok = images_loaded(run / "report.html", tmp_path)
    assert imgs == (run / "report.html").read_text().count("<img ") and ok == imgs
