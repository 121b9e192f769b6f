"""A default never fails: without --rate, a model too slow for the default 1/s gets its fit verdict, the highest
sustainable rate and "battery life at 1/s: not sustainable" (exit 0); an explicit --rate it cannot keep is an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeslim.errors import EdgeslimError
from edgeslim.measure.battery import LifeOptions


def test_default_rate_too_fast_is_a_verdict_not_an_error() -> None:
    row = {"name": "big.onnx", "energy_mj": 171.0, "energy_latency_ms": 4110.0}
    LifeOptions().checked().annotate_rows([row], "cortex-m4")
    b = row["battery"]
    assert b["sustainable"] is False and b["note"] == "battery life at 1/s: not sustainable"
    assert b["max_rate_per_s"] == pytest.approx(1e3 / 4110.0)
    with pytest.raises(EdgeslimError, match=r"--rate 1/s: .* at most 0\.243 inferences/s"):
        LifeOptions(rate="1/s").checked().annotate_rows([dict(row)], "cortex-m4")


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    import edgeslim
    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec

    d = tmp_path_factory.mktemp("slow")
    torch.manual_seed(0)
    export_onnx(build_model(make_spec("cnn1d", (1, 40), 10, width=8)).eval(), (1, 40), d / "m.onnx")
    prof = yaml.safe_load((Path(edgeslim.__file__).parent / "devices" / "cortex-m4.yaml").read_text())
    prof.pop("calibration", None)
    prof.update(name="slow-m4", clock_mhz=0.001)  # 1 kHz: the tiny model takes seconds per inference
    (d / "slow.yaml").write_text(yaml.safe_dump(prof))
    return d / "m.onnx", d / "slow.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=120)


def test_fit_without_rate_exits_0_with_the_highest_rate(slow_case: tuple[Path, Path]) -> None:
    model, dev = slow_case
    p = _cli("fit", str(model), "--device", str(dev))
    assert p.returncode == 0, p.stderr
    assert "battery life at 1/s: not sustainable" in p.stdout and "highest sustainable rate" in p.stdout
    j = json.loads(_cli("fit", str(model), "--device", str(dev), "--json").stdout)
    assert j["latency_ms"] > 1000 and j["battery"]["max_rate_per_s"] == pytest.approx(1e3 / j["latency_ms"])
    q = _cli("fit", str(model), "--device", str(dev), "--rate", "1/s")  # asked for explicitly: an error
    assert q.returncode == 1 and "lower the rate" in q.stderr and len(q.stderr.strip().splitlines()) == 1


def test_measure_without_rate_exits_0(slow_case: tuple[Path, Path]) -> None:
    model, dev = slow_case
    p = _cli("measure", str(model), "--device", str(dev), "--runs", "5", "--quick", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["battery"]["note"] == "battery life at 1/s: not sustainable"
