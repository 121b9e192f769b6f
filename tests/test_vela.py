"""Arm Ethos-U through Vela: `fit`/`measure --device ethos-u55-128` report Vela's SRAM, flash, cycles and CPU fallbacks.

The Vela runs need the `vela` extra (ethos-u-vela) and the `litert` extra (to make the .tflite); they skip
without them. The missing-extra message and the summary parsing need neither."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from edgeslim import api
from edgeslim.litert import litert_available, vela

needs_both = pytest.mark.skipif(not (vela.vela_available() and litert_available()), reason=vela.INSTALL_HINT)


def test_parse_summary_reads_vela_figures():
    row = {"system_config": "Ethos_U55_High_End_Embedded", "memory_mode": "Shared_Sram", "sram_memory_used": "2.5",
           "off_chip_flash_memory_used": "10.0", "on_chip_flash_memory_used": "0", "cycles_total": "1000",
           "cycles_npu": "800", "core_clock": "500000000.0", "inference_time": "2e-06", "nn_macs": "4096"}
    out = "Warning (supported operators) operator: TANH, ofm: 'x'\nCPU operators = 1 (10.0%)\nNPU operators = 9 (90%)\n"
    v = vela.parse_summary(row, out, {**vela.DEFAULTS, "accelerator": "ethos-u55-128"})
    assert v["sram_bytes"] == 2560 and v["flash_bytes"] == 10240 and v["cycles"] == 1000
    assert v["latency_ms"] == 0.002 and v["cpu_fallback"] == ["TANH"] and (v["npu_ops"], v["cpu_ops"]) == (9, 1)
    assert v["source"] == "estimated:vela"


def test_without_the_extra_one_line_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(vela, "vela_available", lambda: False)
    f = tmp_path / "m.tflite"
    f.write_bytes(b"x")
    assert vela.vela_for_fit(f, {"accelerator": "ethos-u55-128"}) == {"missing": vela.INSTALL_HINT}
    assert "pip install" in vela.INSTALL_HINT and "\n" not in vela.INSTALL_HINT
    assert "export" in vela.vela_for_fit(tmp_path / "m.onnx", {})["missing"]  # an ONNX file: say what to do


def _tflite(tmp_path: Path, int8: bool) -> Path:
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.options import ExportOptions

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()
    calib = np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32)
    path = tmp_path / ("int8.tflite" if int8 else "fp32.tflite")
    to_tflite(net, (3, 16, 16), path, ExportOptions(int8=int8), calib=calib if int8 else None)
    return path


@needs_both
def test_fit_on_ethos_u55_reports_vela(tmp_path):
    path = _tflite(tmp_path, int8=True)
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", str(path), "--device", "ethos-u55-128", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["vela"]
    assert v["accelerator"] == "ethos-u55-128" and v["source"] == "estimated:vela"
    assert v["sram_bytes"] > 3 * 16 * 16 and v["flash_bytes"] > 8 * 8 * 8 * 4  # holds the input, the weights
    assert v["latency_ms"] == pytest.approx(1e3 * v["cycles"] / v["clock_hz"], rel=0.01)
    assert v["cpu_ops"] == 0 and v["cpu_fallback"] == [] and v["npu_ops"] > 0 and v["fits_sram"]
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", str(path), "--device", "ethos-u55-128"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "estimated:vela" in r.stdout and "cycles" in r.stdout


@needs_both
def test_float_operators_fall_back_to_the_cpu(tmp_path):
    v = api.check_fit(_tflite(tmp_path, int8=False), "ethos-u55-128")["vela"]
    assert v["cpu_ops"] > 0 and "FULLY_CONNECTED" in v["cpu_fallback"]
