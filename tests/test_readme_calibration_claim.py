"""README's Cortex-M4 calibration claim is the profile's own leave-one-out figure, with the command that prints
it (issue 24: no figure typed by hand without its generator)."""

from __future__ import annotations

import re
from pathlib import Path

import edgeslim
from edgeslim.devices import load_device

README = Path(edgeslim.__file__).parent.parent / "README.md"


def test_readme_loo_range_is_the_profiles_and_names_its_command() -> None:
    text = " ".join(README.read_text().split())
    m = re.search(r"left-out energy is estimated at (\d+\.\d+)x-(\d+\.\d+)x of the published figure \(`([^`]+)`", text)
    assert m, "README lost its cortex-m4 leave-one-out sentence"
    cal = load_device("cortex-m4").calibration
    assert cal is not None and cal.loo_energy_ratio is not None
    assert [float(m.group(1)), float(m.group(2))] == [float(v) for v in cal.loo_energy_ratio]
    assert m.group(3) == cal.command == "python -m edgeslim.devices.calibrate --device cortex-m4"
    assert "three held-out benchmarks are within 1.5x" not in text  # the best-of-four claim of before
