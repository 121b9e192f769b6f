"""Built-in tasks. Both are generated or shipped locally: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from edgeslim.data.task import Task, make_task


def digits(seed: int = 0) -> Task:
    """scikit-learn's 1,797 real 8x8 handwritten digits, pixel values scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(1234)  # fixed test split so every run compares on the same digits
    idx = rng.permutation(len(x))
    n_test = 360
    te, tr = idx[:n_test], idx[n_test:]
    return make_task("digits", x[tr], y[tr], x[te], y[te], seed=seed)


def mnist1d(seed: int = 0) -> Task:
    """MNIST-1D (Greydanus 2020), generated procedurally: 4,000 train / 1,000 test 40-sample signals."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated, never get_dataset(): that one downloads
    x = np.asarray(d["x"], np.float32)[:, None]  # (N, 1, 40)
    xt = np.asarray(d["x_test"], np.float32)[:, None]
    return make_task("mnist1d", x, np.asarray(d["y"]), xt, np.asarray(d["y_test"]), seed=seed)


BUILTIN = {
    "digits": (digits, "scikit-learn handwritten digits, 1x8x8 images, 10 classes"),
    "mnist1d": (mnist1d, "MNIST-1D generated signals, 1x40 sequences, 10 classes"),
}
