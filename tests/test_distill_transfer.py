"""Transfer sets for distillation: loading unlabelled inputs, labelling them once, the KD term over them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import trained

from edgeslim.data import load_task
from edgeslim.data.transfer import load_transfer
from edgeslim.distill.kd import Teachers, TransferSet, kd_loss, kd_loss_fn, soft_targets
from edgeslim.distill.train import KDSettings, distill_model
from edgeslim.errors import EdgeslimError
from edgeslim.models.student import build_student
from edgeslim.passes.distill import Distill
from edgeslim.train import TrainConfig, evaluate


@pytest.fixture(scope="module")
def teacher(tiny_image_task):
    return trained("lenet300", tiny_image_task, 5, h1=32, h2=16)


def test_generated_mnist1d_transfer_is_new_unlabelled_signals():
    x = load_transfer("generate:300", "mnist1d", (1, 40), seed=0)
    assert x.shape == (300, 1, 40) and x.dtype == np.float32 and np.isfinite(x).all()
    task = load_task("mnist1d")
    seen = {r.tobytes() for r in np.concatenate([task.x_train, task.x_val, task.x_test])}
    assert not any(r.tobytes() in seen for r in x)  # another generator seed: none is a task sample
    assert not np.array_equal(x, load_transfer("generate:300", "mnist1d", (1, 40), seed=1))


def test_transfer_files_and_errors(tmp_path):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "u.npz", x=x, y=np.zeros(20))  # labels in the file are ignored
    assert np.array_equal(load_transfer(str(tmp_path / "u.npz"), "t", (1, 8, 8)), x)
    seq = np.random.default_rng(0).random((5, 1, 40)).astype(np.float32)
    np.save(tmp_path / "s.npy", seq)
    assert np.array_equal(load_transfer(str(tmp_path / "s.npy"), "t", (1, 40)), seq)  # (N, C, L) kept as is
    cases = {
        "generate:10": ("digits", "has no generator"),
        "generate:x": ("mnist1d", "positive sample count"),
        str(tmp_path / "s.npy"): ("t2", "the task's inputs (1, 8, 8)"),
        str(tmp_path / "none.npz"): ("t", "no such file"),
    }
    np.savez(tmp_path / "two.npz", a=x, b=x)
    cases[str(tmp_path / "two.npz")] = ("t", "expected an array 'x'")
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    cases[str(tmp_path / "nan.npy")] = ("t", "NaN")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases[str(tmp_path / "junk.npz")] = ("t", "not a readable")
    (tmp_path / "u.txt").write_text("1 2 3")
    cases[str(tmp_path / "u.txt")] = ("t", "unsupported file type")
    for spec, (task, msg) in cases.items():
        shape = (1, 40) if task == "mnist1d" else (1, 8, 8)
        with pytest.raises(EdgeslimError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            load_transfer(spec, task, shape)


def test_transfer_set_labels_once_and_feeds_the_kd_term(teacher, tiny_image_task):
    t_net, spec = teacher
    xu = np.random.default_rng(1).random((50, 1, 8, 8)).astype(np.float32)
    ts = TransferSet(xu, [t_net], ratio=3, seed=0)
    with torch.no_grad():
        assert torch.allclose(ts.outputs[0], t_net.eval()(torch.from_numpy(xu)))
    torch.manual_seed(0)
    s, _ = build_student(spec, 0.5)
    s.train()
    xb, yb = torch.from_numpy(tiny_image_task.x_train[:8]), torch.from_numpy(tiny_image_task.y_train[:8])
    seen: list[torch.Tensor] = []
    h = s.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    out = s(xb)
    loss = kd_loss_fn(Teachers([t_net]), 2.0, 0.7, None, transfer=ts, seed=0)(s, xb, yb, out)
    h.remove()
    assert len(seen) == 2 and seen[1].shape[0] == 24  # 3 transfer inputs per labelled one
    # the same draw, by hand: KD over labelled + transfer outputs, CE on the labelled batch only
    ref = TransferSet(xu, [t_net], ratio=3, seed=0)
    xr, tr = ref.sample(8)
    assert torch.equal(xr, seen[1])
    with torch.no_grad():
        t_all = torch.cat([t_net(xb), tr[0]])
        s_all = torch.cat([out, s(xr)])
    want = 0.7 * kd_loss(s_all, soft_targets([t_all], 2.0), 2.0) + 0.3 * F.cross_entropy(out, yb)
    assert torch.allclose(loss.detach(), want, atol=1e-5)
    loss.backward()
    with pytest.raises(ValueError, match="not both"):
        Distill(mixup=1.0, transfer="generate:10")
    with pytest.raises(ValueError, match="positive sample count"):  # caught when the recipe is parsed
        Distill(transfer="generate:0")


def test_distill_model_with_transfer_file(tmp_path, teacher, tiny_image_task):
    t_net, spec = teacher
    from conftest import quadrant_images

    xu, _ = quadrant_images(600, seed=5)
    np.savez(tmp_path / "u.npz", x=xu)
    torch.manual_seed(0)
    s, _ = build_student(spec, 0.5)
    hist = distill_model(s, [t_net], tiny_image_task, TrainConfig(epochs=3),
                         KDSettings(transfer=str(tmp_path / "u.npz")), quiet=True)
    assert hist["epochs"] == 3
    assert evaluate(s, tiny_image_task.x_test, tiny_image_task.y_test) > 0.5


def test_distill_cli_transfer_error_is_one_line(tmp_path, teacher):
    t_net, spec = teacher
    from edgeslim import models

    models.save_model(tmp_path / "teacher", t_net, spec)
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "distill", str(tmp_path / "teacher"), "-t", "digits",
                        "-o", str(tmp_path / "s"), "--transfer", "generate:100", "--epochs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "has no generator" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_recipe_transfer_set_carries_into_pruning_finetune(tmp_path, tiny_image_task, monkeypatch):
    from conftest import quadrant_images

    from edgeslim.distill import kd
    from edgeslim.pipeline import run_recipe
    from edgeslim.recipe import parse_recipe

    xu, _ = quadrant_images(300, seed=9)
    np.savez(tmp_path / "u.npz", x=xu)
    trained("lenet300", tiny_image_task, 5, tmp_path / "base", h1=32, h2=16)
    recipe = parse_recipe(f"""
version: 1
finetune: {{epochs: 2, lr: 0.001}}
passes:
  - distill: {{width: 0.5, temperature: 3.0, transfer: "{tmp_path / 'u.npz'}", train: {{epochs: 3}}}}
  - magnitude_prune: {{sparsity: 0.5}}
""")
    draws: list[int] = []
    orig = kd.TransferSet.sample

    def count(self, n):
        draws.append(n)
        return orig(self, n)

    monkeypatch.setattr(kd.TransferSet, "sample", count)
    res = run_recipe(recipe, tmp_path / "base", tiny_image_task, tmp_path / "run", quiet=True)
    assert [s["name"] for s in res["stages"]] == ["baseline", "distill", "magnitude_prune"]
    steps = -(-len(tiny_image_task.x_train) // 64)
    assert len(draws) >= 5 * steps - 2  # 3 distill epochs + 2 pruning fine-tune epochs, all with transfer batches
    assert res["stages"][1]["notes"]["transfer"].endswith("u.npz")
