"""Shared helpers of the search tests (no tests here): a tiny task written as .npz and a trained model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import quadrant_images

FAST = ["--knobs", "structured,quantize,finetune", "--proxy-epochs", "2", "--top", "2", "--device", "cortex-m4"]


def make_env(root: Path) -> tuple[Path, Path]:
    """(task .npz, trained LeNet-5 folder): 4 classes of 1x8x8 images, class = the bright quadrant."""
    from edgeslim import api
    from edgeslim.train import TrainConfig

    root.mkdir(parents=True, exist_ok=True)
    npz, model = root / "tiny.npz", root / "model"
    if (model / "spec.json").exists():
        return npz, model
    x, y = quadrant_images(900)
    np.savez(npz, x_train=x[:700], y_train=y[:700], x_test=x[700:], y_test=y[700:])
    api.train("lenet5", str(npz), model, TrainConfig(epochs=6, seed=0), quiet=True)
    return npz, model


def cli(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"edgeslim {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "edgeslim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def trials_of(storage: str, name: str = "edgeslim-search") -> list:
    import optuna

    from edgeslim.search.workers import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(storage)).get_trials(deepcopy=False)
