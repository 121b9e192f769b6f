"""User device profiles everywhere (by path, then by name), every problem of a profile at once, runtime figures
never silently 0, the template, a failed run that keeps run.json's device, and a `.tflite`'s energy and
battery life from its own operators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeslim import devices
from edgeslim.devices import load_device, template
from edgeslim.errors import EdgeslimError

BOARD = ("name: my-m4-256k\nkind: mcu\nclock_mhz: 80\nflash_bytes: 1048576\nsram_bytes: 262144\n"
         "peak_macs_per_cycle: {int8: 2.0, fp32: 0.5}\nefficiency: 0.07467\nactive_power_mw: 25\n"
         "sleep_power_mw: 0.006\nbattery: 225mAh@3V\n")


def test_template_is_a_valid_profile_and_names_work_after_loading(tmp_path, capsys):
    p = tmp_path / "t.yaml"
    p.write_text(template())
    d = load_device(p)
    assert d.name == "my-board" and d.sram_bytes == 262144 and d.runtime == "tflite-micro"
    assert load_device("my-board") == d  # a name recorded in results finds the user's file
    assert "warning" not in capsys.readouterr().err  # the template sets the runtime's flash and RAM


def test_device_path_env_finds_a_profile_by_name(tmp_path, monkeypatch):
    (tmp_path / "lab-board.yaml").write_text(BOARD.replace("my-m4-256k", "lab-board"))
    monkeypatch.setenv(devices.DEVICE_PATH_ENV, str(tmp_path))
    assert load_device("lab-board").clock_mhz == 80
    with pytest.raises(EdgeslimError, match="devices --template"):
        load_device("no-such-board")


def test_every_problem_at_once(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: b\nkind: mcu\nsram_bytes: 1024\nclock_mhz: fast\nsramm: 3\n")
    with pytest.raises(EdgeslimError) as e:
        load_device(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: missing keys ")
    for key in ("'flash_bytes'", "'peak_macs_per_cycle'", "'active_power_mw'", "key 'clock_mhz'", "key 'sramm'"):
        assert key in msg


def test_runtime_figures_default_with_a_warning_never_zero(tmp_path, capsys):
    p = tmp_path / "b.yaml"
    p.write_text(BOARD)
    d = load_device(p)
    assert (d.runtime_flash_bytes, d.runtime_ram_bytes) == devices.RUNTIME_DEFAULTS["mcu"]
    err = capsys.readouterr().err
    assert "no 'runtime_flash_bytes': assuming 81,920 bytes" in err and "no 'runtime_ram_bytes'" in err
    load_device(p)
    assert capsys.readouterr().err == ""  # once per file


def test_recipe_device_path_is_relative_to_the_recipe(tmp_path):
    from edgeslim.recipe import load_recipe

    (tmp_path / "b.yaml").write_text(BOARD)
    r = tmp_path / "r.yaml"
    r.write_text("version: 1\ndevice: b.yaml\npasses:\n  - quantize_fp16\n")
    assert Path(load_recipe(r).device or "") == tmp_path / "b.yaml"


def test_failed_run_keeps_run_json_device(tmp_path, monkeypatch, tiny_image_task):
    from edgeslim import api, pipeline
    from edgeslim.recipe import parse_recipe
    from edgeslim.train import TrainConfig

    model = tmp_path / "m"
    api.train("lenet5", tiny_image_task, model, TrainConfig(epochs=1), quiet=True)
    board = tmp_path / "b.yaml"
    board.write_text(BOARD)
    recipe = parse_recipe("version: 1\npasses:\n  - quantize_fp16\n")
    run = tmp_path / "run"
    res = pipeline.run_recipe(recipe, model, tiny_image_task, run, quiet=True, device=str(board), report=False)
    assert res["device"] == "my-m4-256k" and (run / "results.json").exists()
    assert json.loads((run / "run.json").read_text())["device"] == str(board)

    def boom(*a, **k):
        raise EdgeslimError("stage failed")

    monkeypatch.setattr(pipeline, "_run_stages", boom)
    with pytest.raises(EdgeslimError, match="stage failed"):
        pipeline.run_recipe(recipe, model, tiny_image_task, run, quiet=True, device="cortex-m7")
    assert json.loads((run / "run.json").read_text())["device"] == str(board)
    with pytest.raises(EdgeslimError, match="unknown device"):  # refused before anything is loaded or written
        pipeline.run_recipe(recipe, model, tiny_image_task, run, quiet=True, device="my-m4-512k")


@pytest.fixture(scope="module")
def int8_tflite(tiny_image_task, tmp_path_factory):
    from edgeslim import api, models
    from edgeslim.litert import litert_available
    from edgeslim.litert.convert import to_tflite
    from edgeslim.litert.options import ExportOptions
    from edgeslim.train import TrainConfig

    if not litert_available():
        pytest.skip("LiteRT extra not installed")
    d = tmp_path_factory.mktemp("tfl")
    api.train("lenet5", tiny_image_task, d / "m", TrainConfig(epochs=6), quiet=True)
    net, _ = models.load_model(d / "m")
    t = tiny_image_task
    s = to_tflite(net, t.input_shape, d / "solo" / "int8.tflite", ExportOptions(int8=True), calib=t.calibration(64),
                  check=t.x_test, labels=t.y_test)
    return net, Path(s["path"]), s


def test_tflite_energy_and_battery_from_its_own_ops(int8_tflite, tmp_path):
    from edgeslim.api import check_fit
    from edgeslim.measure.battery import LifeOptions
    from edgeslim.measure.tflite_counts import count_tflite

    net, path, _ = int8_tflite
    c = count_tflite(path)
    conv = [layer for layer in c.layers if layer.op in ("CONV_2D", "FULLY_CONNECTED")]
    assert conv and all(layer.precision == "int8" for layer in conv)
    # the MACs of the file's own operators equal the PyTorch model's conv + linear MACs
    from edgeslim.models.counts import count_macs

    assert c.macs == pytest.approx(count_macs(net, (1, 8, 8)), rel=0.02)
    board = tmp_path / "b.yaml"
    board.write_text(BOARD)
    r = check_fit(path, str(board), life=LifeOptions("225mAh@3V", "1/s"))
    assert r["energy_mj"] > 0 and r["energy_method"] == "estimated:uncalibrated@my-m4-256k (.tflite operators)"
    assert r["battery"]["lifetime_s"] > 0 and r["arena_source"] == "recorded:tflite-micro"


class _Out:
    scale = 0.01


class _Fake:
    """A stand-in LiteRT model whose outputs are given."""

    output = _Out()
    path = "m.tflite"

    def __init__(self, got: np.ndarray):
        self.got = got

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.got


def test_int8_parity_judges_agreement_and_accuracy_with_consistent_limits():
    import torch

    from edgeslim.litert.convert import litert_parity

    ident = torch.nn.Identity()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 4)).astype(np.float32)
    y = x.argmax(1)
    far = x.copy()
    far[0, 0] += 0.0803  # one logit 8.03 output steps away, no answer changed: passes (the old rule refused it)
    p = litert_parity(_Fake(far), ident, x, int8=True, labels=y)
    assert "parity_failed" not in p and p["parity_max_diff_lsb"] == pytest.approx(8.03, abs=0.01)
    flipped = x.copy()
    for i in range(4):  # 4 of 40 answers change: agreement 90%, accuracy 100% -> 90%
        flipped[i, (y[i] + 1) % 4] = 10.0
    p = litert_parity(_Fake(flipped), ident, x, int8=True, labels=y)
    msg = p["parity_failed"]
    assert "top-1 agreement with the fake-quant PyTorch model 90.0% on 40 samples (limit: at least 95%)" in msg
    assert "accuracy 90.00% vs 100.00% for the fake-quant PyTorch model on 40 test samples, 10.00 points lower " \
           "(limit: at most 1 point lower)" in msg
    assert "parity_failed" not in litert_parity(_Fake(x.copy()), ident, x, int8=True)  # no labels: agreement only


def test_export_refuses_a_failing_tflite_and_force_writes_it_labelled(int8_tflite, tiny_image_task, tmp_path,
                                                                      monkeypatch):
    import edgeslim.litert.convert as conv
    from edgeslim.litert.options import ExportOptions

    net, _, s = int8_tflite
    p = s["parity"]
    assert "parity_failed" not in p and p["parity_samples"] == len(tiny_image_task.y_test)
    assert abs(p["parity_accuracy"] - p["parity_reference_accuracy"]) <= 0.01 + 1e-9
    monkeypatch.setattr(conv, "litert_parity", lambda *a, **k: {"parity_failed": "INT8 .tflite misses the parity check: X"})
    t = tiny_image_task
    out = tmp_path / "a.tflite"
    with pytest.raises(EdgeslimError, match="misses the parity check: X; nothing written"):
        conv.to_tflite(net, t.input_shape, out, ExportOptions(int8=True), calib=t.calibration(32), check=t.x_test[:8])
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left
    forced = conv.to_tflite(net, t.input_shape, out, ExportOptions(int8=True, force=True), calib=t.calibration(32),
                            check=t.x_test[:8])
    assert out.is_file() and forced["parity_failed"].endswith(": X")


def test_devices_template_command(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "devices", "--template"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == template()
    (tmp_path / "b.yaml").write_text(r.stdout)
    assert load_device(tmp_path / "b.yaml").flash_bytes == 1048576


def test_a_user_profile_named_like_a_builtin_wins_for_its_name(tmp_path, capsys):
    p = tmp_path / "mine.yaml"
    p.write_text(BOARD.replace("my-m4-256k", "cortex-m7"))
    try:
        assert load_device(p).sram_bytes == 262144
        assert "is a built-in profile's" in capsys.readouterr().err
        assert load_device("cortex-m7").sram_bytes == 262144  # the run's recorded name means the user's file
    finally:
        devices._USER.pop("cortex-m7", None)
    assert load_device("cortex-m7").sram_bytes != 262144
