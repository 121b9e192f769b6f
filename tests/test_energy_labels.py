"""One label vocabulary for every energy figure: measured:rapl / measured:nvml, estimated:calibrated@<device>
(LOO error x-y), estimated:uncalibrated@<device>, plus "incomplete: N ops not counted". The JSON of `measure`
and `fit` on every built-in device profile is grepped for every energy label it holds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslim.devices import builtin_devices

LABEL = re.compile(
    r"^(measured:(rapl|nvml)(\+nvml)?"
    r"|estimated:calibrated@[\w.-]+ \(LOO error \d+\.\d\dx-\d+\.\d\dx\)( \(uncalibrated precision: [\w, ]+\))?"
    r"|estimated:uncalibrated@[\w.-]+( \(on measured latency\))?)"
    r"(; incomplete: \d+ ops not counted)?$")


def _labels(d: object) -> list[str]:
    """Every value under a key naming an energy method, anywhere in the JSON."""
    out: list[str] = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("energy_method", "latency_method") and isinstance(v, str):
                out.append(v)
            else:
                out += _labels(v)
    elif isinstance(d, list):
        for v in d:
            out += _labels(v)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("lab") / "m.onnx"
    export_onnx(build_model(make_spec("cnn1d", (1, 40), 10, width=8)).eval(), (1, 40), p)
    return p


def _cli(*args: str) -> object:
    p = subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("device", builtin_devices())
def test_every_energy_label_is_in_the_vocabulary(model: Path, device: str) -> None:
    m = _cli("measure", str(model), "--device", device, "--runs", "5", "--quick", "--json")
    f = _cli("fit", str(model), "--device", device, "--json")
    labels = _labels(m) + _labels(f)
    assert labels and all(LABEL.match(x) for x in labels), labels
    from edgeslim.devices import load_device

    calibrated = load_device(device).calibration is not None
    assert all(("calibrated@" in x and "uncalibrated@" not in x) == calibrated for x in labels
               if x.startswith("estimated:")), labels
    if device == "cortex-m4":  # an FP32 model on the INT8-calibrated MCU says so
        assert "(uncalibrated precision: fp32)" in m[0]["energy_method"]  # type: ignore[index]


def test_host_energy_rests_on_the_measured_latency(model: Path) -> None:
    r = _cli("measure", str(model), "--device", "host", "--runs", "30", "--quick", "--json")[0]  # type: ignore[index]
    if r["energy_method"].startswith("measured:"):
        pytest.skip("RAPL readable here: the energy itself is measured")
    assert r["energy_method"] == "estimated:uncalibrated@host (on measured latency)"
    assert r["energy_latency_ms"] == pytest.approx(r["latency_ms_p50"], rel=1e-3)


def test_incomplete_counts_are_labelled() -> None:
    from onnx import TensorProto, helper

    from edgeslim.devices import load_device
    from edgeslim.measure.fields import energy_fields

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    body = lambda n: helper.make_graph([helper.make_node("Relu", ["x"], [n])], n, [],  # noqa: E731
                                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body("a"), else_branch=body("b"))],
                          "g", [x, c], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    r = energy_fields(m, load_device("cortex-a72"), None, {"x": [1, 4]})
    assert r["energy_method"] == "estimated:uncalibrated@cortex-a72; incomplete: 2 ops not counted", r
