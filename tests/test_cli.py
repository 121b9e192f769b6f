"""The CLI contract: exit 0 / 1 (user error: one line, no traceback) / 2 (internal), --json outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeslim import api, cli


def edgeslim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=300)


def test_models_json():
    r = edgeslim("models", "--json")
    assert r.returncode == 0
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert rows["resnet8"]["macs"] == 12_501_632


def test_tasks_lists_builtins():
    r = edgeslim("tasks", "--json")
    assert r.returncode == 0
    assert {t["name"] for t in json.loads(r.stdout)["builtin"]} == {"digits", "digits28", "mnist1d"}


def test_user_error_is_one_line_exit_1(tmp_path):
    r = edgeslim("train", "--model", "lenet5", "--task", "no-such-task", "--out", str(tmp_path / "m"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown task 'no-such-task'" in lines[0]
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_recipe_typo_exit_1(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("version: 1\npasses:\n  - magnitude_prune: {sparsty: 0.5}\n")
    r = edgeslim("run", str(rec), "--model", str(tmp_path), "--task", "digits", "--out", str(tmp_path / "run"))
    assert r.returncode == 1
    assert "r.yaml:3" in r.stderr and "sparsity" in r.stderr and "Traceback" not in r.stderr


def test_bad_option_exit_1():
    r = edgeslim("train", "--bogus")
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_train_and_measure_json(tmp_path):
    out = tmp_path / "m"
    r = edgeslim("train", "--model", "lenet300", "--task", "digits", "--out", str(out), "--epochs", "2", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["test_accuracy"] > 0.5 and (out / "model.safetensors").exists()
    r = edgeslim("measure", str(out), "--task", "digits", "--runs", "30", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-6)
    assert row["latency_ms_p50"] > 0 and row["params"] == m["params"]


def test_internal_error_exit_2(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(api, "train", boom)
    monkeypatch.setattr(sys, "argv", ["edgeslim", "train", "--model", "lenet5", "--task", "digits", "--out", "x"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert "internal error" in capsys.readouterr().err


def test_passes_lists_registry_with_defaults():
    r = edgeslim("passes", "--json")
    assert r.returncode == 0
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["magnitude_prune"]["kind"] == "torch" and rows["quantize_int8"]["kind"] == "onnx"
    assert rows["magnitude_prune"]["fields"]["sparsity"] == "0.5"
    assert "_test_interrupt" not in rows
