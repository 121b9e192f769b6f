"""Built-in tasks. Both are generated or shipped locally: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from edgeslim.data.task import Task, make_task


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] in 0..16, labels) of scikit-learn's digits. Read from the CSV scikit-learn ships
    without importing scikit-learn, whose import (scipy and all) took 3-6 s of a 50 s `make demo` on a
    loaded 2-core host for a 30 ms read; `load_digits` itself if the file is not where it has always been."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        f = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            d = np.loadtxt(f, delimiter=",")  # 64 pixel columns, then the label
            return d[:, :-1].reshape(-1, 8, 8), d[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    b = load_digits()
    return b.images, b.target


def digits(seed: int = 0) -> Task:
    """scikit-learn's 1,797 real 8x8 handwritten digits, pixel values scaled to [0, 1]."""
    images, target = _digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = target.astype(np.int64)
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


def mnist1d_unlabelled(n: int, seed: int = 0) -> np.ndarray:
    """`n` fresh MNIST-1D signals from the generator, labels dropped: a transfer set for distillation.
    The generator seed (10,000 + seed) differs from the task's (42), so none of them is a task sample."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 10_000 + seed
    args.num_samples = n
    d = make_dataset(args)
    x = np.concatenate([np.asarray(d["x"], np.float32), np.asarray(d["x_test"], np.float32)])
    return x[:n, None]


# tasks whose generator can make unlabelled inputs (`transfer: generate:N`)
GENERATORS = {"mnist1d": mnist1d_unlabelled}

BUILTIN = {
    "digits": (digits, "scikit-learn handwritten digits, 1x8x8 images, 10 classes"),
    "mnist1d": (mnist1d, "MNIST-1D generated signals, 1x40 sequences, 10 classes"),
}
