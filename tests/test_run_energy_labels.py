"""No energy figure of a run lacks a label (issue 24): a tiny run (LeNet-300 at 32/16 on digits, baseline + INT8)
on EVERY built-in device profile, fresh each time (about 1-2 s per profile after the first), and its
results.json grepped for every energy figure and every method next to one. Each label is from the vocabulary:
measured:..., estimated:calibrated@<device> (LOO error ...), estimated:uncalibrated@<device>, estimated:vela;
a battery lifetime carries the label of the energy it is built on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.devices import builtin_devices, load_device
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import parse_recipe

PREFIXES = ("measured:", "estimated:calibrated@", "estimated:uncalibrated@", "estimated:vela")
INT8 = ("version: 1\npasses:\n  - quantize_int8: {candidates: [u8s8-rr-pc], max_accuracy_drop: 100, "
        "calibration_samples: 32}\n")


def _energy_entries(d: object, path: str = "") -> list[tuple[str, dict]]:
    """(path, dict) of every dict in the JSON that holds an energy figure or a battery lifetime."""
    out: list[tuple[str, dict]] = []
    if isinstance(d, dict):
        if any(("energy" in k and k.endswith(("_mj", "_j"))) or k == "lifetime_days" for k in d):
            out.append((path, d))
        for k, v in d.items():
            out += _energy_entries(v, f"{path}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _energy_entries(v, f"{path}[{i}]")
    return out


def _methods(d: object, path: str = "") -> list[tuple[str, str]]:
    """(path, value) of every `energy_method` anywhere, and every `method` of a dict holding an energy figure."""
    out: list[tuple[str, str]] = []
    if isinstance(d, dict):
        energy = any("energy" in k or k == "lifetime_days" for k in d)
        for k, v in d.items():
            if isinstance(v, str) and (k == "energy_method" or (k == "method" and energy)):
                out.append((f"{path}/{k}", v))
            out += _methods(v, f"{path}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _methods(v, f"{path}[{i}]")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    spec = models.make_spec("lenet300", (1, 8, 8), 10, h1=32, h2=16)
    folder = tmp_path_factory.mktemp("lab") / "base"
    models.save_model(folder, models.build_model(spec), spec)
    return folder


@pytest.mark.parametrize("device", builtin_devices())
def test_every_energy_figure_of_a_run_is_labelled(base: Path, tmp_path: Path, device: str) -> None:
    run_recipe(parse_recipe(INT8), base, load_task("digits", seed=0), tmp_path / "run", quiet=True,
               device=device)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    entries = _energy_entries(res)
    assert len([p for p, _ in entries if p.count("/") == 1]) == 2  # both stages carry their energy figure
    for path, d in entries:  # every figure has a label beside it
        figure = next(k for k in d if ("energy" in k and k.endswith(("_mj", "_j"))) or k == "lifetime_days")
        if d[figure] is None:
            continue
        label = d.get("energy_method") or d.get("method")
        assert isinstance(label, str) and label.startswith(PREFIXES), (path, figure, label)
    methods = _methods(res)
    assert len(methods) >= 2
    bad = [(p, m) for p, m in methods if not m.startswith(PREFIXES)]
    assert not bad, bad
    calibrated = load_device(device).calibration is not None
    stage = [m for p, m in methods if p.endswith("]/energy_method") and p.count("/") == 2]
    assert len(stage) == 2 and all(("estimated:calibrated@" in m) == calibrated for m in stage
                                   if m.startswith("estimated:")), stage
