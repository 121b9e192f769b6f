"""Faults around a run: a full disk, too little memory, untrusted pickles, a run refused before its first write,
a run folder in use. (Untrusted ONNX external data and recipe paths, and the audit of unpickling: test_untrusted_files.)"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import (
    assert_one_line_error,
    assert_user_error,
    listing,
    main_inproc,
    one_line,
    subprocess_cli,
)

from edgeslim import api, fsutil, models, resources, runlock
from edgeslim.errors import EdgeslimError
from edgeslim.train import TrainConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_image_task) -> Path:
    out = tmp_path_factory.mktemp("faults") / "lenet5"
    api.train("lenet5", tiny_image_task, out, TrainConfig(epochs=3), quiet=True)
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory, tiny_image_task) -> Path:
    p = tmp_path_factory.mktemp("faults_task") / "tiny.npz"
    t = tiny_image_task
    np.savez(p, x_train=t.x_train, y_train=t.y_train, x_test=t.x_test, y_test=t.y_test)
    return p


RECIPE = "version: 1\nfinetune: {epochs: 1}\npasses:\n  - magnitude_prune: {sparsity: 0.5}\n" \
         "  - quantize_int8: {calibration_samples: 32, select: fixed}\n"


def _recipe(folder: Path, text: str = RECIPE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "r.yaml"
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------ full disk


def _enospc_when(monkeypatch, needle: str = "") -> None:
    """Make fsync (every atomic write calls it) fail with ENOSPC for temp files whose path has `needle`."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if needle in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "results.json"
    fsutil.write_json(p, {"ok": 1})
    _enospc_when(monkeypatch)
    with pytest.raises(OSError) as e:  # the CLI prints it in one line, exit 1 (edgeslim.exitcodes)
        fsutil.write_json(p, {"ok": 2})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert "the previous file, if any, is unchanged" in str(e.value)
    assert json.loads(p.read_text()) == {"ok": 1}
    assert listing(tmp_path) == ["results.json"]  # no temporary file left


def test_full_disk_during_a_stage_keeps_the_finished_ones(model, tiny_image_task, tmp_path: Path, monkeypatch) -> None:
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    out = tmp_path / "run"
    _enospc_when(monkeypatch, ".02_quantize_int8.")  # the disk fills while the third stage is written
    with pytest.raises(OSError) as e:
        run_recipe(parse_recipe(RECIPE), model, tiny_image_task, out, quiet=True)
    assert e.value.errno == errno.ENOSPC and "02_quantize_int8" in e.value.filename
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["00_baseline", "01_magnitude_prune"]
    monkeypatch.undo()
    res = run_recipe(parse_recipe(RECIPE), model, tiny_image_task, out, quiet=True)  # space again: resumes
    assert [s["name"] for s in res["stages"]] == ["baseline", "magnitude_prune", "quantize_int8"]


def test_full_disk_through_the_cli_is_one_line(model, tmp_path: Path, monkeypatch) -> None:
    save = tmp_path / "m.json"
    save.write_text("previous\n")
    _enospc_when(monkeypatch, ".m.json.")
    code, _, err = main_inproc("measure", str(model), "--runs", "5", "--quick", "--save", str(save))
    assert_user_error(code, err, "m.json: No space left on device; the previous file, if any, is unchanged",
                      "free some space")
    assert save.read_text() == "previous\n"


def test_an_unwritable_output_path_is_one_line(model, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = main_inproc("measure", str(model), "--runs", "5", "--quick", "--save", str(tmp_path / "file" / "m.json"))
    assert_user_error(code, err, "file")
    assert (tmp_path / "file").read_text() == "a file, not a folder"


# --------------------------------------------------------------------------------------------- memory


def test_training_that_cannot_fit_is_refused_up_front(tiny_image_task, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(resources, "available_bytes", lambda: 64 * 1024)  # pretend 64 KiB are free
    code, _, err = main_inproc("train", "--model", "lenet5", "--task", "digits", "--out", str(tmp_path / "m"),
                               "--epochs", "1", "--batch-size", "4096")
    assert_user_error(code, err, "batch size 4096", "--batch-size")
    assert not (tmp_path / "m").exists()


def test_run_checks_memory_before_its_first_write(model, task_file, tmp_path: Path, monkeypatch) -> None:
    rec = _recipe(tmp_path, "version: 1\nfinetune: {epochs: 1}\npasses:\n"
                            "  - quantize_int8: {calibration_samples: 100000}\n")
    monkeypatch.setattr(resources, "available_bytes", lambda: 2 * 1024 * 1024)
    # the calibration streams, so a feed of 16 samples must fit: pretend each sample's activations take 4 MiB
    monkeypatch.setattr(resources, "activation_bytes", lambda *_: (4 << 20, 1024))
    code, _, err = main_inproc("run", str(rec), "-m", str(model), "-t", str(task_file), "-o", str(tmp_path / "run"))
    assert_user_error(code, err, "quantize_int8 (recipe line 4)", "16 samples at a time")
    assert not (tmp_path / "run").exists()


def test_optimize_calibration_set_that_cannot_fit(model, tmp_path: Path, monkeypatch) -> None:
    from edgeslim.deploy.export import export_onnx

    net, spec = models.load_model(model)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(net, tuple(spec["input_shape"]), onnx_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.zeros((64, 1, 1, 8, 8), np.float32))
    monkeypatch.setattr(resources, "available_bytes", lambda: 8 * 1024)
    code, _, err = main_inproc("optimize", str(onnx_path), "--calib", str(calib), "-o", str(tmp_path / "o.onnx"))
    assert_user_error(code, err, "1 sample at a time")
    assert not (tmp_path / "o.onnx").exists()


def test_optimize_memory_check_depends_on_the_batch_not_the_samples(model, tmp_path: Path, monkeypatch) -> None:
    """Memory for 4 samples at once but not for 64: the calibration streams, so 64 samples run (issue 23)."""
    from edgeslim.deploy.export import export_onnx
    from edgeslim.measure.arena import plan_activation_arena

    net, spec = models.load_model(model)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(net, tuple(spec["input_shape"]), onnx_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).random((64, 1, 1, 8, 8)).astype(np.float32))
    one = plan_activation_arena(onnx_path, reorder=False).naive_bytes
    monkeypatch.setattr(resources, "available_bytes", lambda: int(4 * one / resources.LIMIT))
    code, out, err = main_inproc("optimize", str(onnx_path), "--calib", str(calib), "--samples", "48",
                                 "--candidates", "fp32-opt", "--bench-seconds", "0.2", "-o", str(tmp_path / "o.onnx"),
                                 "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["samples"]["calibration_count"] == 48 and (tmp_path / "o.onnx").exists()
    assert res["peak_rss_bytes"]["self"] > 50 << 20  # bytes: at least the interpreter with torch and ORT
    code, out, err = main_inproc("optimize", str(onnx_path), "--calib", str(calib), "--samples", "48",
                                 "--candidates", "fp32-opt", "--bench-seconds", "0.2", "-o", str(tmp_path / "o.onnx"))
    assert code == 0, err
    assert "peak RSS " in out.strip().splitlines()[-2]  # before the last line's pointer to recipes/any-model.yaml


# ---------------------------------------------------------------------------------- untrusted pickles


class _Evil:
    """Unpickling this writes a marker file: proof that a pickle ran."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil(path: Path, marker: Path) -> Path:
    _Evil.marker = str(marker)
    torch.save(_Evil(), path)
    return path


def test_no_command_unpickles_without_trust_pickle(model, task_file, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "evil.pt", marker)
    rec = _recipe(tmp_path / "rec")
    out = tmp_path / "out"
    commands = [
        ["run", str(rec), "-m", str(evil), "-t", str(task_file), "-o", str(out / "run")],
        ["export", str(evil), "--format", "onnx", "-o", str(out / "e.onnx"), "-t", str(task_file)],
        ["measure", str(evil), "--runs", "3"], ["fit", str(evil)], ["arena", str(evil)],
        ["compile", str(evil), "-o", str(out / "c.onnx")], ["optimize", str(evil), "-o", str(out / "o.onnx")],
        ["distill", str(evil), "-t", str(task_file), "-o", str(out / "student")],
        ["sensitivity", "-m", str(evil), "-t", str(task_file), "-o", str(out / "sens")],
        ["search", str(evil), "-t", str(task_file), "--out", str(out / "search"), "--trials", "1"],
    ]
    for args in commands:
        code, _, err = main_inproc(*args)
        assert code == 1, (args, err)
        assert "evil.pt" in assert_user_error(code, err), err
    assert not marker.exists()  # no pickle ran
    assert listing(out) == []  # and no command wrote anything
    # run --trust-pickle is the one way in, and says so in its error above
    code, _, err = main_inproc(*commands[0])
    assert "--trust-pickle" in err


def test_npz_files_with_pickled_objects_are_refused(tmp_path: Path, model) -> None:
    from edgeslim.data import load_task
    from edgeslim.data.transfer import load_transfer
    from edgeslim.onnxkit.inputs import InputSpec, load_npz_feeds

    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    obj = np.array([_Evil(), 1], dtype=object)
    p = tmp_path / "objs.npz"
    np.savez(p, x=obj, y=np.array([0, 1]), input=obj)
    for load in (lambda: load_task(str(p)), lambda: load_transfer(str(p), "t", (1,)),
                 lambda: load_npz_feeds(p, [InputSpec("input", np.dtype("float32"), [1, 1])])):
        with pytest.raises(EdgeslimError) as e:
            load()
        assert_one_line_error(e.value, "objs.npz")
    assert not marker.exists()


# --------------------------------------------------------------------- refused before the first write


def test_refused_runs_write_nothing(model, task_file, tmp_path: Path) -> None:
    rec = _recipe(tmp_path / "rec")
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "evil.pt", marker)
    digits_model = tmp_path / "digits_model"  # a model for 8x8 digits: wrong for the 1x8x8 4-class task file
    api.train("lenet300", "digits", digits_model, TrainConfig(epochs=1), quiet=True, h1=16, h2=8)
    cases = [(evil, "trust-pickle"), (digits_model, "classes")]
    for m, needle in cases:
        out = tmp_path / f"run_{m.name}"
        code, _, err = main_inproc("run", str(rec), "-m", str(m), "-t", str(task_file), "-o", str(out))
        assert_user_error(code, err, needle)
        assert not out.exists()
    # a folder that was there stays as it was, with or without --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        code, _, err = main_inproc("run", str(rec), "-m", str(evil), "-t", str(task_file), "-o", str(mine), *extra)
        assert code == 1
        assert listing(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the lock


def test_a_run_folder_in_use_is_refused_in_one_line(model, task_file, tmp_path: Path) -> None:
    rec = _recipe(tmp_path / "rec")
    out = tmp_path / "run"
    with runlock.hold(out):  # this process holds the folder; another edgeslim must not touch it
        r = subprocess_cli("run", str(rec), "-m", str(model), "-t", str(task_file), "-o", str(out))
        assert_user_error(r.returncode, r.stderr, "in use by another edgeslim process")
        assert listing(out) == []
    r = subprocess_cli("run", str(rec), "-m", str(model), "-t", str(task_file), "-o", str(out))
    assert r.returncode == 0, r.stderr  # released: the same command now runs


def test_the_lock_is_reentrant_safe_and_force_keeps_the_folder(model, tiny_image_task, tmp_path: Path) -> None:
    """--force empties a run folder in place (the lock is on the folder itself) and sweeps temporaries."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    (out / ".x.abc.tmp").write_text("left by a killed process")
    ident = {"model": "m", "task": "t", "recipe_digest": "d", "seed": 0}
    with pytest.raises(EdgeslimError, match="unreadable"):
        runlock.check_claim(out, ident, force=False)
    inode = out.stat().st_ino
    with runlock.hold(out):
        assert runlock.claim(out, ident, force=True) is False
    assert out.stat().st_ino == inode and listing(out) == ["run.json"]
    (out / "stages").mkdir()
    (out / "stages" / ".01_x.abc.tmp").mkdir()
    with runlock.hold(out):
        assert runlock.claim(out, ident, force=False) is True  # the same run: resumed, temporaries swept
    assert listing(out) == ["run.json", "stages"]


def test_keyboard_interrupt_seen_by_typer_is_exit_130_in_one_line(monkeypatch) -> None:
    """Before: Typer turned Ctrl-C into a returned 130 that main() dropped, so `edgeslim run` exited 0."""
    def interrupted() -> list:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "list_models", interrupted)
    code, out, err = main_inproc("models", "--json")
    assert code == 130 and out == ""
    assert one_line(err).startswith("interrupted: ") and "edgeslim models --json" in err
