"""Distilling a transformer teacher into a student of another architecture (a GRU): the pass, the CLI,
the shipped recipe, and a pipeline run whose stages are measured (accuracy, size, latency, arena, energy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgeslim import models
from edgeslim.distill.kd import kd_loss, soft_targets
from edgeslim.distill.train import distill_model
from edgeslim.errors import EdgeslimError
from edgeslim.passes import PASSES, RunContext
from edgeslim.passes.distill import Distill, kd_settings, student_base
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import load_recipe, parse_recipe
from edgeslim.train import TrainConfig, evaluate, train_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"dim": 16, "depth": 1, "mlp": 32}


@pytest.fixture(scope="module")
def teacher(tiny_seq_task, tmp_path_factory):
    """A tiny transformer trained on the tiny sequence task, saved as a model folder."""
    torch.manual_seed(0)
    t = tiny_seq_task
    spec = models.make_spec("transformer", t.input_shape, t.num_classes, **TEACHER)
    net = models.build_model(spec)
    train_model(net, t, TrainConfig(epochs=8, lr=3e-3, batch_size=16), quiet=True)  # confident enough to teach
    d = tmp_path_factory.mktemp("teacher") / "t"
    models.save_model(d, net, spec)
    return net, spec, d


def test_distill_transformer_into_gru_student(teacher, tiny_seq_task):
    net, spec, _ = teacher
    t = tiny_seq_task
    cfg = Distill(student={"model": "gru", "hidden": 16}, temperature=1.0, alpha=0.9,
                  train=TrainConfig(epochs=6, lr=1e-2, batch_size=16))
    torch.manual_seed(0)
    from edgeslim.models.student import build_student

    student, sspec = build_student(student_base(spec, t, cfg), cfg.width, cfg.depth, cfg.student)
    assert sspec["arch"] == "gru" and sspec["kwargs"] == {"hidden": 16} and tuple(sspec["input_shape"]) == (1, 16)
    x = torch.from_numpy(t.x_train)

    def kd_on_train() -> float:
        with torch.no_grad():
            return float(kd_loss(student.eval()(x), soft_targets([net.eval()(x)], 1.0), 1.0))

    before = kd_on_train()
    hist = distill_model(student, [net], t, cfg.train, kd_settings(cfg), quiet=True)
    assert kd_on_train() < 0.4 * before  # the student moved towards the teacher's outputs
    assert hist["history"][-1]["loss"] < 0.4 * hist["history"][0]["loss"]
    assert isinstance(student.rnn, torch.nn.GRU) and student.rnn.hidden_size == 16
    assert evaluate(student, t.x_test, t.y_test) >= 0.9


def test_distill_pass_with_student_model_and_a_pickled_teacher_spec(teacher, tiny_seq_task, tmp_path):
    net, spec, _ = teacher
    ctx = RunContext(stage_dir=tmp_path, spec={"arch": "pickle", "input_shape": [1, 16]},
                     finetune=TrainConfig(epochs=1), quiet=True, teacher_loader=lambda: net)
    cfg = Distill(student={"model": "lstm", "hidden": 4}, train=TrainConfig(epochs=1))
    res = PASSES["distill"].fn(net, tiny_seq_task, cfg, ctx)  # classes come from the task
    assert res.spec is not None and res.spec["arch"] == "lstm" and res.spec["num_classes"] == 3
    assert res.notes["student"]["arch"] == "lstm" and res.notes["student_params"] < res.notes["teacher_params"]


def test_student_model_errors_are_clear(teacher, tiny_seq_task):
    _, spec, _ = teacher
    with pytest.raises(ValueError, match="student.model 'gruu' is not in the zoo"):
        Distill(student={"model": "gruu"})
    with pytest.raises(ValueError, match="needs init: student"):
        Distill(init="current", student={"model": "gru"})
    cfg = Distill(width=0.25, student={"model": "gru"})
    with pytest.raises(EdgeslimError, match="width scale the teacher's architecture"):
        student_base(spec, tiny_seq_task, cfg)
    same = Distill(width=0.5, student={"model": "transformer"})  # the teacher's own arch: width applies
    assert student_base(spec, tiny_seq_task, same) is spec
    from edgeslim.models.student import build_student

    with pytest.raises(EdgeslimError, match="bad arguments for 'gru'"):
        build_student(spec, overrides={"model": "gru", "hiddn": 3})


def test_distill_cli_student_model(teacher, tiny_seq_task, tmp_path):
    t = tiny_seq_task
    data = tmp_path / "seq.npz"
    np.savez(data, x_train=np.concatenate([t.x_train, t.x_val]), y_train=np.concatenate([t.y_train, t.y_val]),
             x_test=t.x_test, y_test=t.y_test)
    _, _, folder = teacher
    cmd = [sys.executable, "-m", "edgeslim.cli", "distill", str(folder), "-t", str(data), "-o", str(tmp_path / "s"),
           "--student-model", "gru", "--student-arg", "hidden=6", "--student-arg", "frame=2", "--epochs", "2",
           "--temperature", "3", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["student"] == {"hidden": 6, "frame": 2} and m["params"] < m["teacher_params"]
    student, spec = models.load_model(tmp_path / "s")
    assert spec["arch"] == "gru" and student.rnn.input_size == 2
    bad = subprocess.run(cmd[:-1] + ["--width", "0.3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "width scale the teacher's architecture" in bad.stderr
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "train", "-m", "gru", "-t", str(data), "-o",
                        str(tmp_path / "g"), "--width", "8", "--epochs", "1", "--optimizer", "adamw",
                        "--weight-decay", "0.05", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr  # --width is the GRU's hidden size
    spec = models.load_model(tmp_path / "g")[1]
    assert spec["kwargs"] == {"hidden": 8} and spec["extra"]["train"]["weight_decay"] == 0.05


def test_seq_distill_recipe_parses():
    r = load_recipe(ROOT / "recipes" / "seq-distill-gru.yaml")
    names = [s.name for s in r.steps]
    assert names[0] == "distill" and "qat" in names
    d = r.steps[0].config
    assert isinstance(d, Distill) and d.student["model"] == "gru" and d.transfer and d.transfer.startswith("generate:")
    with pytest.raises(EdgeslimError, match="not in the zoo"):
        parse_recipe("version: 1\npasses:\n  - distill: {student: {model: rnnx}}\n", "bad.yaml")


def test_pipeline_measures_a_distilled_quantized_gru(teacher, tiny_seq_task, tmp_path):
    """The shipped recipe's shape (distill into a GRU, QAT) at tiny sizes; every stage is measured."""
    text = yaml.safe_dump({"version": 1, "finetune": {"epochs": 1, "lr": 0.001}, "passes": [
        {"distill": {"student": {"model": "gru", "hidden": 16}, "temperature": 2.0,
                     "train": {"epochs": 3, "lr": 0.01}}},
        {"qat": {"weight_bits": 8}},
    ]})
    _, _, folder = teacher
    res = run_recipe(parse_recipe(text, "inline.yaml"), folder, tiny_seq_task, tmp_path / "run", quiet=True)
    base, dist, q = res["stages"]
    assert dist["macs"] == 4 * 3 * 16 * (4 + 16) + 16 * 3 and dist["macs"] < base["macs"] / 5
    for s in (base, dist, q):
        assert s["arena_bytes"] and s["energy_mj"] > 0 and s["latency_ms_p50"] > 0 and 0 <= s["accuracy"] <= 1
    assert q["notes"]["recurrent_weight_only"] == ["GRU"] and q["size_bytes"] < dist["size_bytes"]
    assert q["macs"] == dist["macs"]  # the ONNX-only stage's MACs come from the graph, GRU included


def test_a_checkpoint_of_another_architecture_is_not_resumed(tiny_seq_task, tmp_path):
    """An interrupted run leaves a checkpoint; training another student into the same place starts over."""
    ck = tmp_path / ".s.checkpoint.pt"
    cfg = TrainConfig(epochs=1)
    gru = models.build_model(models.make_spec("gru", (1, 16), 3, hidden=4))
    train_model(gru, tiny_seq_task, cfg, quiet=True, checkpoint=ck)
    assert ck.exists()
    lstm = models.build_model(models.make_spec("lstm", (1, 16), 3, hidden=4))
    hist = train_model(lstm, tiny_seq_task, cfg, quiet=True, checkpoint=ck)  # no shape-mismatch crash
    assert hist["epochs"] == 1
