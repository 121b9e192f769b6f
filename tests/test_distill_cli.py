"""`edgeslim distill` and `edgeslim unpack` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from edgeslim import models
from edgeslim.formats.eshare import save_shared
from edgeslim.quant.sharing import cluster_layer, shared_layers, unshare


def edgeslim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True, timeout=300)


def test_distill_and_unpack_commands(tmp_path, tiny_image_task):
    t = tiny_image_task
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=np.concatenate([t.x_train, t.x_val]), y_train=np.concatenate([t.y_train, t.y_val]),
             x_test=t.x_test, y_test=t.y_test)
    from edgeslim import api
    from edgeslim.train import TrainConfig

    api.train("lenet300", str(data), tmp_path / "teacher", TrainConfig(epochs=3), quiet=True)
    r = edgeslim("distill", str(tmp_path / "teacher"), "-t", str(data), "-o", str(tmp_path / "student"),
                 "--width", "0.25", "--epochs", "3", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["student"] == {"h1": 75, "h2": 25} and m["params"] < m["teacher_params"] / 3
    student, spec = models.load_model(tmp_path / "student")
    assert student.fc1.out_features == 75

    for _, layer in shared_layers(student):
        cluster_layer(layer, 3)
    unshare(student)
    save_shared(tmp_path / "s.eshare", student.state_dict(), spec, [f"{n}.weight" for n, _ in shared_layers(student)])
    r = edgeslim("unpack", str(tmp_path / "s.eshare"), "-o", str(tmp_path / "unpacked"))
    assert r.returncode == 0, r.stderr
    back, _ = models.load_model(tmp_path / "unpacked")
    x = torch.from_numpy(t.x_test[:8])
    assert torch.equal(back(x), student.eval()(x))

    r = edgeslim("distill", str(tmp_path / "teacher"), "-t", str(data), "-o", str(tmp_path / "s2"), "--depth", "0.5")
    assert r.returncode == 1 and "no removable blocks" in r.stderr
