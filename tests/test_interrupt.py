"""Ctrl-C (SIGINT), SIGTERM and SIGKILL sent to real `edgeslim` processes in the middle of a stage: one
line naming what was interrupted and the command that resumes, exit 130 / 143, nothing half-written,
and the same command again reaches exactly the metrics of an uninterrupted run (latency aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import finish, listing, one_line, signal_on, start

from edgeslim import api
from edgeslim.train import TrainConfig

RECIPE = """version: 1
finetune: {epochs: 8, lr: 0.001}
passes:
  - magnitude_prune: {sparsity: 0.5}
  - quantize_int8: {calibration_samples: 64, select: fixed}
"""
SAME = ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes")  # latency excluded


def interrupted_line(err: str, sig: str, *needles: str) -> str:
    line = one_line(err)
    assert line.startswith(f"interrupted: {sig} during "), line
    assert "resume with the same command: edgeslim " in line, line
    for n in needles:
        assert n in line, (n, line)
    return line


def stages(run: Path) -> list[dict]:
    return [{k: s[k] for k in SAME} for s in json.loads((run / "results.json").read_text())["stages"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small MLP trained on digits, the recipe, and the results of one uninterrupted run."""
    root = tmp_path_factory.mktemp("interrupt")
    model = root / "model"
    api.train("lenet300", "digits", model, TrainConfig(epochs=3), quiet=True, h1=64, h2=32)
    rec = root / "r.yaml"
    rec.write_text(RECIPE)
    ref = root / "reference"
    finish("run", str(rec), "-m", str(model), "-t", "digits", "-o", str(ref))
    return {"root": root, "model": model, "recipe": rec, "reference": stages(ref)}


def _run_args(env: dict, out: Path) -> list[str]:
    return ["run", str(env["recipe"]), "-m", str(env["model"]), "-t", "digits", "-o", str(out)]


def test_sigint_during_fine_tuning_then_resume(env: dict, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a pass's fine-tuning; meanwhile a second process on the same folder is
    refused (the first is paused with SIGSTOP so the race cannot end before the second one starts)."""
    out = tmp_path / "run"
    first = start(*_run_args(env, out), pause_on="epoch 2/8")
    rc, stdout, err = signal_on(first, "epoch 2/8", signal.SIGSTOP, wait=False)
    second = subprocess.run([sys.executable, "-m", "edgeslim.cli", *_run_args(env, out)], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 1
    assert "in use by another edgeslim process" in one_line(second.stderr)
    first.send_signal(signal.SIGINT)  # delivered when the process continues
    first.send_signal(signal.SIGCONT)
    rest, err = first.communicate(timeout=120)
    assert first.returncode == 130, (stdout + rest, err)
    interrupted_line(err, "SIGINT", "in stage 01_magnitude_prune of", "finished stages are kept",
                     f"edgeslim run {env['recipe']} -m {env['model']} -t digits -o {out}")
    assert "Traceback" not in stdout + rest + err
    assert sorted(os.listdir(out / "stages")) == ["00_baseline"]  # no half stage, no temporary folder
    assert not (out / "results.json").exists()
    res = finish(*_run_args(env, out))
    assert "[baseline] done earlier" in res.stdout
    assert stages(out) == env["reference"]


def test_sigterm_then_sigkill_during_quantization_then_resume(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc, stdout, err = signal_on(start(*_run_args(env, out), pause_on="[quantize_int8] running"), "[quantize_int8] running",
                                signal.SIGTERM)
    assert rc == 143, (stdout, err)
    interrupted_line(err, "SIGTERM", "stage 02_quantize_int8 of")
    assert sorted(os.listdir(out / "stages")) == ["00_baseline", "01_magnitude_prune"]
    rc, stdout, err = signal_on(start(*_run_args(env, out), pause_on="[quantize_int8] running"), "[quantize_int8] running",
                                signal.SIGKILL)
    assert rc == -signal.SIGKILL and "[magnitude_prune] done earlier" in stdout
    finish(*_run_args(env, out))  # the kernel dropped the killed process's lock: the run resumes
    assert stages(out) == env["reference"]
    assert not [p for p in listing(out) if p.endswith(".tmp")]  # what the kill left behind was swept


def _metrics(folder: Path) -> dict:
    m = json.loads((folder / "spec.json").read_text())["extra"]["metrics"]
    return {k: v for k, v in m.items() if k != "epochs"}


def test_sigint_during_train_then_resume(env: dict, tmp_path: Path) -> None:
    args = ["train", "--model", "lenet300", "--task", "digits", "--epochs", "4"]
    finish(*args, "--out", str(tmp_path / "ref"))
    out = tmp_path / "m"
    rc, stdout, err = signal_on(start(*args, "--out", str(out), pause_on="epoch 2/4"), "epoch 2/4", signal.SIGINT)
    assert rc == 130, (stdout, err)
    interrupted_line(err, "SIGINT", "train lenet300 epoch")
    assert not out.exists()  # the model folder appears only at the end; the checkpoint sits beside it
    res = finish(*args, "--out", str(out))
    assert "resuming from epoch" in res.stdout
    assert _metrics(out) == _metrics(tmp_path / "ref")
    assert not list(tmp_path.glob(".m.train-checkpoint*"))  # removed once the model is written


def test_sigterm_during_distill_then_resume(env: dict, tmp_path: Path) -> None:
    args = ["distill", str(env["model"]), "--task", "digits", "--epochs", "4", "--width", "0.5"]
    finish(*args, "--out", str(tmp_path / "ref"))
    out = tmp_path / "s"
    rc, stdout, err = signal_on(start(*args, "--out", str(out), pause_on="[distill] epoch 2/4"), "[distill] epoch 2/4",
                                signal.SIGTERM)
    assert rc == 143, (stdout, err)
    interrupted_line(err, "SIGTERM", "distill epoch")
    assert not out.exists()
    res = finish(*args, "--out", str(out))
    assert "resuming from epoch" in res.stdout
    assert _metrics(out) == _metrics(tmp_path / "ref")


def test_sigint_during_optimize_writes_nothing(env: dict, tmp_path: Path) -> None:
    from edgeslim import models
    from edgeslim.deploy.export import export_onnx

    net, spec = models.load_model(env["model"])
    src = tmp_path / "m.onnx"
    export_onnx(net, tuple(spec["input_shape"]), src)
    out = tmp_path / "o.onnx"
    p = start("optimize", str(src), "-o", str(out), "--bench-seconds", "60", "--candidates", "fp32-opt,w8")
    # The opening line (stdout) comes once the command runs, imports done (a fixed sleep from the start
    # raced the imports on a loaded machine); the signal goes 3 s later, inside the minute of timing.
    def warned(line: str) -> bool:
        if "s of interleaved timing" not in line:
            return False
        time.sleep(3)
        return True

    rc, _, err = signal_on(p, warned, signal.SIGINT, timeout=120)
    assert rc == 130, err
    interrupted_line(err, "SIGINT", f"optimize {src}", "nothing was written")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.onnx"]
