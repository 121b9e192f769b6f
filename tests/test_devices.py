"""Device profiles and the fit check's verdicts at both sides of the flash and RAM limits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeslim.api import check_fit
from edgeslim.devices import builtin_devices, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.measure.device_fit import device_fit


def test_builtin_profiles_load():
    names = set(builtin_devices())
    assert {"cortex-m4", "cortex-m7", "cortex-a53", "cortex-a72", "jetson-nano", "host"} <= names
    for n in names:
        d = load_device(n)
        assert d.flash_bytes > 0 and d.sram_bytes > 0 and d.macs_per_second("fp32") > 0
    m4 = load_device("cortex-m4")
    assert (m4.clock_mhz, m4.sram_bytes, m4.flash_bytes) == (120, 640 * 1024, 2 * 1024 * 1024)
    assert m4.macs_per_second("int8") == pytest.approx(120e6 * 2 * m4.efficiency)


def test_host_is_detected():
    import os

    assert load_device("host").cores == (os.cpu_count() or 1)


def test_user_yaml_and_errors(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("clock_mhz: 64\nflash_bytes: 65536\nsram_bytes: 8192\npeak_macs_per_cycle: {int8: 1}\n"
                 "active_power_mw: 5\n")
    d = load_device(p)
    assert d.name == "tiny" and d.sram_bytes == 8192
    with pytest.raises(EdgeslimError, match="cortex-m4"):
        load_device("cortex-m99")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clock_mhz: 64\nflash_bytes: 1\nsram_bytes: 1\npeak_macs_per_cycle: {int8: 1}\n"
                   "active_power_mw: 5\nsramm: 3\n")
    with pytest.raises(EdgeslimError, match="sramm"):
        load_device(bad)


def test_verdict_both_sides_of_limits():
    m4 = load_device("cortex-m4")
    w_max = m4.flash_bytes - m4.runtime_flash_bytes
    a_max = m4.sram_bytes - m4.runtime_ram_bytes
    assert device_fit(m4, w_max, a_max).fits
    r = device_fit(m4, w_max + 1, a_max)
    assert not r.fits and not r.fits_flash and r.fits_ram and "flash" in r.reasons[0]
    r = device_fit(m4, w_max, a_max + 1)
    assert not r.fits and r.fits_flash and not r.fits_ram and "RAM" in r.reasons[0]


def test_fit_check_onnx(tmp_path):
    import onnx
    from test_deploy_planner import chain

    path = tmp_path / "c.onnx"
    onnx.save(chain(), str(path))
    r = check_fit(path, "cortex-m4")
    assert r["weights_bytes"] == (100 * 50 + 50 * 200) * 4
    assert r["arena_bytes"] == 1600 and r["fits"]
    assert r["energy_method"] == ("estimated:calibrated@cortex-m4 (LOO error 0.66x-1.78x) (uncalibrated precision: "
                                  "fp32)")  # an FP32 graph on the INT8-calibrated profile
    # by hand: 15,000 fp32 MACs at 120 MHz x 0.5 MAC/cycle x efficiency 0.07098 = 3.52 ms (+ the elementwise
    # ops), at 40.56 mW active power -> ~0.143 mJ; the Horowitz op/byte term is a fraction of a percent
    assert 3.52 <= r["latency_ms"] <= 3.6 and 0.142 <= r["energy_mj"] <= 0.147
    small = tmp_path / "small.yaml"
    small.write_text("clock_mhz: 64\nflash_bytes: 65536\nsram_bytes: 1024\npeak_macs_per_cycle: {fp32: 1}\n"
                     "active_power_mw: 5\nruntime_flash_bytes: 0\nruntime_ram_bytes: 0\n")  # stated: no default
    r = check_fit(path, str(small))
    assert r["fits_flash"] and not r["fits_ram"]  # 1600 B arena > 1024 B


def test_fit_cli(tmp_path):
    import onnx
    from test_deploy_planner import chain

    path = tmp_path / "c.onnx"
    onnx.save(chain(), str(path))
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", str(path), "--device", "cortex-m4", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] is True and d["arena_bytes"] == 1600 and d["device"] == "cortex-m4"
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", str(path), "--device", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "unknown device 'nope'" in r.stderr


def test_fit_routes_tflite_to_litert(tmp_path, monkeypatch):
    litert_fit = pytest.importorskip("edgeslim.litert.footprint")
    monkeypatch.setattr(litert_fit, "tflite_footprint",
                        lambda p: {"model_bytes": 100_000, "tflm_arena_bytes": 700_000,
                                   "arena_method": "recorded:tflite-micro"})
    monkeypatch.setattr("edgeslim.litert.litert_available", lambda *parts: True)
    f = tmp_path / "m.tflite"
    f.write_bytes(b"\0" * 100_000)
    r = check_fit(f, "cortex-m4")
    assert r["arena_source"] == "recorded:tflite-micro" and r["arena_bytes"] == 700_000
    assert r["weights_bytes"] == 100_000 and r["fits_flash"] and not r["fits_ram"]


def test_devices_and_arena_commands(tmp_path):
    import onnx
    from test_deploy_planner import chain
    from typer.testing import CliRunner

    from edgeslim.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["devices", "--json"])
    assert r.exit_code == 0
    assert "cortex-m4" in {d["name"] for d in json.loads(r.stdout)}
    path = tmp_path / "c.onnx"
    onnx.save(chain(), str(path))
    r = runner.invoke(app, ["arena", str(path), "--json", "--align", "1"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["arena_bytes"] == 1600 and d["naive_bytes"] == 2200 and len(d["buffers"]) == 4
