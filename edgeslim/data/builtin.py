"""Built-in tasks. Both are generated or shipped locally: nothing is downloaded."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from edgeslim.data.task import Task, make_task
from edgeslim.fsutil import write_bytes


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


def _digits_split(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of the digits at `size` x `size` (8: as shipped; else bilinear
    upsampling as `torch.nn.functional.interpolate`), pixel values in [0, 1]; the same fixed test split."""
    images, target = _digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    if size != 8:
        import torch
        import torch.nn.functional as F

        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()
    y = target.astype(np.int64)
    rng = np.random.default_rng(1234)  # fixed test split so every run compares on the same digits
    idx = rng.permutation(len(x))
    n_test = 360
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


def digits(seed: int = 0) -> Task:
    """scikit-learn's 1,797 real 8x8 handwritten digits, pixel values scaled to [0, 1]."""
    return make_task("digits", *_digits_split(8), seed=seed)


def digits28(seed: int = 0) -> Task:
    """`digits` upsampled to 1x28x28 (bilinear): MNIST's input size, so LeNet-300-100 has MNIST's 266,610
    parameters. The same images, labels, test split and validation split as `digits`."""
    return make_task("digits28", *_digits_split(28), seed=seed)


MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _cache_dir() -> Path:
    """Where generated built-in data is kept: $EDGESLIM_CACHE, else $XDG_CACHE_HOME/edgeslim (~/.cache)."""
    if os.environ.get("EDGESLIM_CACHE"):
        return Path(os.environ["EDGESLIM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeslim"


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The default MNIST-1D set, generated once per mnist1d version and kept in the cache folder: importing
    the generator (scipy, matplotlib) and generating took 4-15 s of every command on a loaded 2-core host,
    reading the 0.8 MB file a few ms. A missing, unreadable or odd file is regenerated; a cache folder that
    cannot be written is skipped."""
    from importlib.metadata import version

    f = _cache_dir() / f"mnist1d-{version('mnist1d')}-default.npz"
    try:
        with np.load(f, allow_pickle=False) as z:
            d = {k: z[k] for k in MNIST1D_KEYS}
        if d["x"].shape == (4000, 40) and d["x_test"].shape == (1000, 40):
            return d
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    from mnist1d.data import get_dataset_args, make_dataset

    g = make_dataset(get_dataset_args())  # generated, never get_dataset(): that one downloads
    d = {k: np.asarray(g[k], np.float32 if k.startswith("x") else np.int64) for k in MNIST1D_KEYS}
    buf = io.BytesIO()
    np.savez(buf, **d)
    try:
        write_bytes(f, buf.getvalue())
    except OSError:
        pass
    return d


def mnist1d(seed: int = 0) -> Task:
    """MNIST-1D (Greydanus 2020), generated procedurally: 4,000 train / 1,000 test 40-sample signals."""
    d = _mnist1d_arrays()
    x = d["x"].astype(np.float32)[:, None]  # (N, 1, 40)
    xt = d["x_test"].astype(np.float32)[:, None]
    return make_task("mnist1d", x, d["y"], xt, d["y_test"], seed=seed)


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
    "digits28": (digits28, "scikit-learn handwritten digits upsampled to 1x28x28 (MNIST's size), 10 classes"),
    "mnist1d": (mnist1d, "MNIST-1D generated signals, 1x40 sequences, 10 classes"),
}
