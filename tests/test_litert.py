"""LiteRT / TFLite Micro backend: conversion both ways, int8 I/O, C array, arena, fit verdict, CLI, stage.

Everything that needs the `litert` extra skips cleanly without it (`make test` installs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeslim import api, models
from edgeslim.errors import EdgeslimError
from edgeslim.litert import INSTALL_HINT, litert_available
from edgeslim.litert.carray import read_c_array, resolver_call, write_c_array
from edgeslim.litert.micro import parse_allocations
from edgeslim.train import TrainConfig, evaluate

needs_litert = pytest.mark.skipif(not litert_available(), reason=INSTALL_HINT)


# --- no extra needed -------------------------------------------------------------------------------

def test_missing_extra_is_one_line_with_install_command(monkeypatch):
    import importlib.util

    from edgeslim import litert

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tflite_micro" else real(n, *a))
    with pytest.raises(EdgeslimError) as e:
        litert.require_litert("micro")
    msg = str(e.value)
    assert "pip install 'edgeslim[litert]'" in msg and "tflite_micro" in msg and "\n" not in msg


def test_cli_without_extra_says_how_to_install(tmp_path):
    code = (
        "import importlib.util as u; real = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n.split('.')[0] in "
        "('litert_torch', 'ai_edge_litert', 'tflite_micro', 'torchao') else real(n, *a)\n"
        "import sys; from edgeslim.cli import main\n"
        f"sys.argv = ['edgeslim', 'measure', {str(tmp_path / 'm.tflite')!r}]\n"
        "main()\n"
    )
    (tmp_path / "m.tflite").write_bytes(b"not used")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1
    assert "pip install 'edgeslim[litert]'" in lines[0]


def test_parse_recorded_allocations():
    text = """[RecordingMicroAllocator] Arena allocation total 6912 bytes
[RecordingMicroAllocator] Arena allocation head 4640 bytes
[RecordingMicroAllocator] Arena allocation tail 2272 bytes
[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 384 bytes with alignment overhead (requested 384 bytes)
"""
    a = parse_allocations(text)
    assert (a.total_bytes, a.head_bytes, a.tail_bytes) == (6912, 4640, 2272)
    assert a.breakdown == {"TfLiteEvalTensor data": 384}
    with pytest.raises(EdgeslimError):
        parse_allocations("nothing here")


def test_resolver_names():
    assert resolver_call("CONV_2D") == "AddConv2D"
    assert resolver_call("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert resolver_call("FULLY_CONNECTED") == "AddFullyConnected"
    assert resolver_call("MAX_POOL_2D") == "AddMaxPool2D"
    assert resolver_call("BATCH_MATMUL") == "AddBatchMatMul"


# --- with the extra --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_image_task) -> Path:
    out = tmp_path_factory.mktemp("lt") / "lenet5"
    api.train("lenet5", tiny_image_task, out, TrainConfig(epochs=8), quiet=True)
    return out


@pytest.fixture(scope="module")
def converted(trained, tiny_image_task, tmp_path_factory):
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.options import ExportOptions

    if not litert_available():
        pytest.skip(INSTALL_HINT)
    net, _ = models.load_model(trained)
    d = tmp_path_factory.mktemp("tfl")
    t = tiny_image_task
    fp32 = to_tflite(net, t.input_shape, d / "fp32.tflite", check=t.x_test[:32])
    int8 = to_tflite(net, t.input_shape, d / "int8.tflite", ExportOptions(int8=True), calib=t.calibration(128),
                     check=t.x_test[:32])
    return {"net": net, "fp32": fp32, "int8": int8, "dir": d}


@needs_litert
def test_fp32_conversion_matches_pytorch(converted, tiny_image_task):
    from edgeslim.litert.interpreter import LiteRTModel

    s = converted["fp32"]
    assert s["input"]["dtype"] == "float32" and s["output"]["dtype"] == "float32"
    assert s["parity"]["parity_max_abs_diff"] < 1e-3 and s["parity"]["parity_top1_agreement"] == 1.0
    t = tiny_image_task
    acc = LiteRTModel(s["path"]).accuracy(t.x_test, t.y_test)
    assert abs(acc - evaluate(converted["net"], t.x_test, t.y_test)) <= 1 / len(t.y_test) + 1e-9


@needs_litert
def test_int8_conversion_full_integer(converted, tiny_image_task):
    from edgeslim.litert.interpreter import LiteRTModel

    s, f = converted["int8"], converted["fp32"]
    for k in ("input", "output"):
        assert s[k]["dtype"] == "int8" and s[k]["scale"] > 0 and -128 <= s[k]["zero_point"] <= 127
    assert s["parity"]["parity_reference"] == "fake-quant PyTorch"
    assert s["parity"]["parity_top1_agreement"] >= 0.95
    assert s["size_bytes"] < f["size_bytes"] / 2.5  # int8 weights; per-channel scales and int32 biases remain
    t = tiny_image_task
    lm8, lm32 = LiteRTModel(s["path"]), LiteRTModel(f["path"])
    assert lm8.accuracy(t.x_test, t.y_test) >= lm32.accuracy(t.x_test, t.y_test) - 0.05


@needs_litert
def test_int8_input_quantization_roundtrip(converted):
    from edgeslim.litert.interpreter import LiteRTModel

    info = LiteRTModel(converted["int8"]["path"]).input
    lo = (-128 - info.zero_point) * info.scale
    hi = (127 - info.zero_point) * info.scale
    x = np.linspace(lo, hi, 1001, dtype=np.float32)
    q = info.quantize(x)
    assert q.dtype == np.int8
    assert np.abs(info.dequantize(q) - x).max() <= info.scale / 2 + 1e-6
    assert np.array_equal(info.quantize(info.dequantize(q)), q)  # exact on the grid
    assert info.quantize(np.array([hi + 10, lo - 10], np.float32)).tolist() == [127, -128]  # saturates


@needs_litert
def test_c_array_bytes_match_file(converted, tmp_path):
    from edgeslim.litert.micro import tflm_arena

    src = Path(converted["int8"]["path"])
    arena = tflm_arena(src)
    c, h = write_c_array(src, tmp_path / "net_model.c", arena_bytes=arena.total_bytes,
                         arena_head_bytes=arena.head_bytes)
    assert read_c_array(c) == src.read_bytes()
    header = h.read_text()
    assert f"#define NET_MODEL_LEN {src.stat().st_size}u" in header
    assert f"#define NET_MODEL_ARENA_SIZE {arena.total_bytes}u" in header
    assert "resolver.AddFullyConnected();" in header and "resolver.AddConv2D();" in header
    assert "aligned(16)" in c.read_text()
    info = converted["int8"]["input"]
    assert f"#define NET_MODEL_INPUT_SCALE {info['scale']!r}f" in header
    assert f"#define NET_MODEL_INPUT_ZERO_POINT {info['zero_point']}" in header
    import shutil

    if shutil.which("gcc"):  # the pair compiles as C99 without warnings
        r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", str(c), "-o",
                            str(tmp_path / "net_model.o")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@needs_litert
def test_tflite_micro_runs_and_reports_arena(converted, tiny_image_task):
    from edgeslim.litert.interpreter import LiteRTModel
    from edgeslim.litert.micro import MicroModel

    for k in ("fp32", "int8"):
        path = converted[k]["path"]
        mm, lm = MicroModel(path), LiteRTModel(path)
        x = tiny_image_task.x_test[:16]
        micro = np.array([lm.output.dequantize(mm.invoke_raw(lm.input.quantize(x[i : i + 1])))[0] for i in range(16)])
        assert (micro.argmax(1) == lm.predict(x).argmax(1)).mean() >= 0.9
        a = mm.arena()
        assert a.total_bytes == a.head_bytes + a.tail_bytes and a.head_bytes > 0


def _device(tmp_path: Path, sram: int, name: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "name": name, "kind": "mcu", "clock_mhz": 100, "flash_bytes": 1 << 20, "sram_bytes": sram,
        "runtime_flash_bytes": 50_000, "runtime_ram_bytes": 4_000, "peak_macs_per_cycle": {"int8": 1.0, "fp32": 0.5},
        "active_power_mw": 30,
    }))
    return p


@needs_litert
def test_fit_verdict_at_both_sides_of_the_ram_limit(converted, tmp_path):
    from edgeslim.litert.footprint import tflite_footprint

    path = converted["int8"]["path"]
    fp = tflite_footprint(path)
    need = fp["tflm_arena_bytes"] + 4_000
    ok = api.check_fit(Path(path), str(_device(tmp_path, need, "exact")))
    short = api.check_fit(Path(path), str(_device(tmp_path, need - 1, "short")))
    assert ok["fits"] and ok["ram_bytes"] == need and ok["flash_bytes"] == fp["model_bytes"] + 50_000
    assert not short["fits"] and short["fits_flash"] and not short["fits_ram"]
    # the `edgeslim fit` command gives the same verdict from the TFLite Micro arena
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", path, "--device",
                        str(_device(tmp_path, need - 1, "short")), "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["fits"] is False and out["arena_bytes"] == fp["tflm_arena_bytes"]


def _npz(task, path: Path) -> Path:
    np.savez(path, x_train=task.x_train, y_train=task.y_train, x_test=task.x_test, y_test=task.y_test)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=600)


@needs_litert
def test_export_c_then_measure_cli(trained, tiny_image_task, tmp_path):
    data = str(_npz(tiny_image_task, tmp_path / "tiny.npz"))
    r = _cli("export", str(trained), "--format", "c", "--int8", "--task", data, "-o", str(tmp_path / "net.c"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    tfl = tmp_path / "net.tflite"
    assert read_c_array(tmp_path / "net.c") == tfl.read_bytes() and (tmp_path / "net.h").is_file()
    assert res["input"]["dtype"] == "int8" and res["tflm_arena"]["total_bytes"] > 0
    assert res["tflm_top1_agreement"] >= 0.9 and res["tflm_checked_samples"] == 16
    assert json.loads((tmp_path / "net.json").read_text())["input"]["scale"] == res["input"]["scale"]
    r = _cli("measure", str(tfl), "--task", data, "--runs", "20", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["accuracy"] == pytest.approx(res["accuracy"])
    assert row["tflm_arena_bytes"] == res["tflm_arena"]["total_bytes"] and row["latency_ms_p50"] > 0


@needs_litert
def test_export_refuses_wrong_task(trained):
    r = _cli("export", str(trained), "--format", "tflite", "--int8", "--task", "mnist1d", "-o", "/tmp/never.tflite")
    assert r.returncode == 1 and "shape" in r.stderr and "Traceback" not in r.stderr


@needs_litert
def test_tflite_stage_in_a_recipe(trained, tiny_image_task, tmp_path):
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    recipe = "version: 1\npasses:\n  - tflite: {int8: true, calibration_samples: 64}\n"
    res = run_recipe(parse_recipe(recipe), trained, tiny_image_task, tmp_path / "run", quiet=True)
    st = json.loads((tmp_path / "run" / "results.json").read_text())["stages"][-1]
    assert st["name"] == "tflite" and st["tflite"] == "stages/01_tflite/model.tflite"
    assert (tmp_path / "run" / st["tflite"]).stat().st_size == st["tflite_size_bytes"]
    assert st["tflm_arena_bytes"] > 0 and 0 <= st["tflite_accuracy"] <= 1
    assert st["tflite_size_bytes"] < res["stages"][0]["size_bytes"] / 2.5
    # the headline verdict is the shipped .tflite's: its own INT8 operators and TFLite Micro's recorded arena
    v = st["device_verdict"]
    assert v["of"] == "model.tflite" and v["energy_method"].endswith("(.tflite operators)")
    assert v["arena_bytes"] == st["tflm_arena_bytes"] and v["weights_bytes"] == st["tflite_size_bytes"]
    from edgeslim.report.run_html import headline

    assert "ships a" in headline(res["stages"]) and ", the .tflite)" in headline(res["stages"])
    bad = "version: 1\nfinetune: {epochs: 1}\npasses:\n  - tflite: {}\n  - magnitude_prune: {sparsity: 0.5}\n"
    with pytest.raises(EdgeslimError, match="must be the last"):
        run_recipe(parse_recipe(bad), trained, tiny_image_task, tmp_path / "run2", quiet=True)


@needs_litert
def test_planner_arena_shown_beside_tflite_micro(converted, tmp_path):
    import shutil

    from edgeslim.deploy.export import export_onnx
    from edgeslim.measure.tflite import arena_beside

    tfl = tmp_path / "m.tflite"
    shutil.copy(converted["fp32"]["path"], tfl)
    export_onnx(converted["net"], (1, 8, 8), tmp_path / "m.onnx")
    b = arena_beside(tmp_path / "m.onnx")
    assert b is not None and b == arena_beside(tfl)
    assert abs(b["planner_arena_bytes"] - b["tflm_arena_head_bytes"]) <= 0.1 * b["tflm_arena_head_bytes"]
    shutil.copy(converted["int8"]["path"], tfl)  # INT8 .tflite beside an FP32 ONNX: not comparable
    assert arena_beside(tfl) is None
