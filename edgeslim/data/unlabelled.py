"""A task without labels: the user's inputs, with the original model as the teacher (`run --inputs X.npz`).

The samples are split once, with the seed, into three disjoint parts: `train` (training, calibration,
Taylor gradients), `val` (every pick: best epoch, sensitivity ratios, INT8 format) and `test` (held out:
nothing trains, calibrates or picks on it; the stages' fidelity is reported on it). The targets `y_*` are the
original model's outputs, flattened and concatenated per sample (float32: `train.task_loss` then fits them
with MSE and `train.evaluate` scores by cosine). With fewer than `AUGMENT_BELOW` samples, the training part
is augmented (noise and small shifts of the training samples only; targets from the teacher) and the task's
`meta["augmented"]` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeslim.data.task import Task
from edgeslim.errors import EdgeslimError

AUGMENT_BELOW = 256  # samples: below this the training part is augmented up to it
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2


def split_indices(n: int, seed: int, where: str = "--inputs") -> dict[str, np.ndarray]:
    """Disjoint train/val/test indices of `n` samples (a seeded permutation; val and test at least 1 each)."""
    if n < 3:
        raise EdgeslimError(f"{where}: {n} sample(s); at least 3 are needed (train, validation, held-out test)")
    idx = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    n_val = max(1, int(round(n * VAL_FRACTION)))
    if n - n_test - n_val < 1:
        n_val = n - n_test - 1
    return {"test": np.sort(idx[:n_test]), "val": np.sort(idx[n_test:n_test + n_val]),
            "train": np.sort(idx[n_test + n_val:])}


def augment(x: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """`x` plus noisy, shifted copies up to `n` samples: Gaussian noise at 3% of the data's spread and a shift
    of up to 2 positions along each of the last two axes (one axis for sequences). Returns (x, record)."""
    if len(x) >= n:
        return x, {"augmented": False}
    rng = np.random.default_rng([seed, 17])
    scale = float(x.std()) or 1.0
    extra = []
    for i in range(n - len(x)):
        s = x[i % len(x)].copy()
        for ax in range(max(0, s.ndim - 2), s.ndim):
            if s.shape[ax] > 4:
                s = np.roll(s, int(rng.integers(-2, 3)), axis=ax)
        s = s + rng.normal(0, 0.03 * scale, s.shape).astype(s.dtype)
        extra.append(s)
    out = np.concatenate([x, np.stack(extra)]).astype(x.dtype)
    return out, {"augmented": True, "from": len(x), "to": len(out),
                 "how": "Gaussian noise (3% of the data's std) and shifts of up to 2 positions"}


def teacher_task(name: str, x: np.ndarray, teacher: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                 augment_below: int = AUGMENT_BELOW) -> Task:
    """The Task of inputs `x` [N, ...] with `teacher(x) -> [N, D]` outputs as targets (module docstring)."""
    parts = split_indices(len(x), seed, name)
    xt, record = augment(x[parts["train"]], augment_below, seed)
    xv, xs = x[parts["val"]], x[parts["test"]]
    task = Task(name, xt, teacher(xt).astype(np.float32), xv, teacher(xv).astype(np.float32), xs,
                teacher(xs).astype(np.float32), num_classes=0, metric="fidelity")
    task.meta = {"labels": "none: the original model's outputs are the targets",
                 "splits": {k: v.tolist() for k, v in parts.items()}, "augmentation": record,
                 "samples": len(x)}
    return task
