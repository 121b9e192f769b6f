"""Every script in examples/ runs in tiny mode (few samples, one epoch) and its results have the expected
shape, so the examples never rot. A new example only needs `run(out, tiny)` and `check(summary)`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("[a-z]*.py"))


def test_every_example_is_collected() -> None:
    assert {"wearable_monitor", "respiratory_monitor", "smart_camera", "sensor_node", "text_search"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_in_tiny_mode(name: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        common = importlib.import_module("examples._common")
        mod = importlib.import_module(f"examples.{name}")
    finally:
        sys.path.remove(str(ROOT))
    gone = common.missing(getattr(mod, "REQUIRES", []))
    if gone:
        pytest.skip(f"{name} needs {', '.join(gone)} (pip install -e '.[{getattr(mod, 'EXTRA', 'litert')}]')")
    torch.manual_seed(0)
    summary = mod.run(tmp_path / name, tiny=True)
    assert summary["example"] == name and summary["tiny"] is True
    common.check_common(summary)
    mod.check(summary)
