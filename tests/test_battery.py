"""Battery life and fleet footprint: parsing, hand-computed cases, the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslim.errors import EdgeslimError
from edgeslim.measure.battery import battery_life, for_device, parse_battery, parse_rate, rest_power

CR2032_J = 225 * 3 * 3.6  # 225 mAh x 3 V = 675 mWh = 2430 J


@pytest.mark.parametrize("text,joules", [("225mAh@3V", CR2032_J), ("225 mAh @ 3 V", CR2032_J),
                                         ("2.5Ah@3.7V", 2500 * 3.7 * 3.6), ("0.675Wh", CR2032_J),
                                         ("675mWh", CR2032_J), ("2430J", CR2032_J)])
def test_parse_battery(text: str, joules: float) -> None:
    assert parse_battery(text).energy_j == pytest.approx(joules)


@pytest.mark.parametrize("text,per_s", [("1/s", 1.0), ("10/min", 10 / 60), ("0.5/s", 0.5), ("1/h", 1 / 3600),
                                        ("24/day", 24 / 86400), ("1/10min", 1 / 600), ("2Hz", 2.0)])
def test_parse_rate(text: str, per_s: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_s)


@pytest.mark.parametrize("bad", ["225", "225mAh", "3V", "", "-1mAh@3V", "0mAh@3V"])
def test_bad_battery_is_one_line(bad: str) -> None:
    with pytest.raises(EdgeslimError, match="--battery") as e:
        parse_battery(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["fast", "1", "1/fortnight", "0/s", "s"])
def test_bad_rate_is_one_line(bad: str) -> None:
    with pytest.raises(EdgeslimError, match="--rate"):
        parse_rate(bad)


def test_inference_dominated_case_by_hand() -> None:
    # 1 mJ and 10 ms per inference, once a second, 6 uW asleep otherwise, on a CR2032
    b = battery_life(1.0, 10.0, parse_rate("1/s"), parse_battery("225mAh@3V"), 0.006, "sleep", "m4")
    avg = 1.0 * 1.0 + 0.006 * (1 - 0.01)  # mW
    assert b.duty == pytest.approx(0.01)
    assert b.average_power_mw == pytest.approx(avg)
    assert b.lifetime_s == pytest.approx(CR2032_J * 1e3 / avg)
    assert b.lifetime_days == pytest.approx(27.96, abs=0.01)
    assert b.inference_share > 0.99


def test_idle_dominated_case_by_hand() -> None:
    # once an hour the inference is negligible: the lifetime is the battery over the sleep power
    b = battery_life(0.1, 2.0, parse_rate("1/h"), parse_battery("225mAh@3V"), 0.006, "sleep", "m4")
    avg = 0.1 / 3600 + 0.006 * (1 - 2e-3 / 3600)
    assert b.average_power_mw == pytest.approx(avg)
    assert b.lifetime_s / (365 * 86400) == pytest.approx(CR2032_J * 1e3 / avg / (365 * 86400))
    assert 12.7 < b.lifetime_s / (365 * 86400) < 12.9
    assert b.inference_share < 0.01
    # a model 10x cheaper buys almost nothing here
    b10 = battery_life(0.01, 0.2, parse_rate("1/h"), parse_battery("225mAh@3V"), 0.006, "sleep", "m4")
    assert b10.lifetime_s / b.lifetime_s < 1.005


def test_rate_too_high_for_the_latency() -> None:
    with pytest.raises(EdgeslimError, match=r"at most 1\.42 inferences/s") as e:
        battery_life(29.2, 704.0, parse_rate("2/s"), parse_battery("225mAh@3V"), 0.006, "sleep", "cortex-m4")
    assert "\n" not in str(e.value)


def test_fleet_energy_and_co2_by_hand() -> None:
    b = battery_life(1.0, 10.0, parse_rate("1/s"), parse_battery("225mAh@3V"), 0.006, "sleep", "m4",
                     fleet=1000, grid_g_per_kwh=475)
    kwh = 1000 * b.average_power_mw * 1e-3 * 8760 / 1000  # W x h -> kWh
    assert b.fleet_kwh_per_year == pytest.approx(kwh)
    assert b.fleet_co2_kg_per_year == pytest.approx(kwh * 0.475)


def test_profile_defaults() -> None:
    from edgeslim.devices import load_device

    m4 = load_device("cortex-m4")
    assert rest_power(m4) == (m4.sleep_power_mw, "sleep")
    assert rest_power(m4, "idle") == (m4.idle_power_mw, "idle")
    b = for_device(1.0, 10.0, m4)  # the profile's battery (225mAh@3V) at 1/s
    assert b is not None and b.battery == "225mAh@3V" and b.rate_per_s == 1.0
    m7 = load_device("cortex-m7")
    assert for_device(1.0, 10.0, m7) is None  # no default battery: nothing to estimate
    assert rest_power(m7) == (m7.idle_power_mw, "idle")  # no sleep figure: idle power


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("bat") / "m.onnx"
    export_onnx(build_model(make_spec("cnn1d", (1, 40), 10, width=8)).eval(), (1, 40), p)
    return p


def test_fit_prints_an_estimated_lifetime(onnx_model: Path) -> None:
    p = _cli("fit", str(onnx_model), "--device", "cortex-m4", "--battery", "225mAh@3V", "--rate", "1/s",
             "--fleet", "100")
    assert p.returncode == 0, p.stderr
    assert "battery life (estimated):" in p.stdout and "fleet of 100 (estimated)" in p.stdout
    j = json.loads(_cli("fit", str(onnx_model), "--device", "cortex-m4", "--rate", "10/min", "--json").stdout)
    b = j["battery"]
    avg = b["rate_per_s"] * j["energy_mj"] + b["rest_power_mw"] * (1 - b["duty"])
    assert b["average_power_mw"] == pytest.approx(avg) and b["battery"] == "225mAh@3V"
    assert b["lifetime_s"] == pytest.approx(CR2032_J * 1e3 / avg)


@pytest.mark.parametrize("opt,val,msg", [("--battery", "225", "--battery '225'"), ("--rate", "fast", "--rate 'fast'"),
                                         ("--rate", "1000/s", "lower the rate")])
def test_bad_values_exit_1_in_one_line(onnx_model: Path, opt: str, val: str, msg: str) -> None:
    p = _cli("fit", str(onnx_model), "--device", "cortex-m4", opt, val)
    assert p.returncode == 1 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    if opt != "--rate" or val == "fast":
        q = _cli("measure", str(onnx_model), "--device", "cortex-m4", "--runs", "5", opt, val)
        assert q.returncode == 1 and msg in q.stderr, q.stderr
