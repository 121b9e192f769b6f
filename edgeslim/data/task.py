"""The task abstraction: arrays for train/val/test, the per-sample input shape and the metric.

Inputs are float32, channels first: images `(C, H, W)`, sequences `(C, L)`, feature vectors `(F,)`.
Labels are int64 class indices in `[0, num_classes)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeslim.errors import EdgeslimError

MAX_CLASSES = 100_000  # a label above this is a value, not a class index (and would need a huge output layer)


@dataclass(repr=False)  # a short repr: printing a task must not dump its arrays
class Task:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    metric: str = "accuracy"
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, input {self.input_shape}, {self.num_classes} classes, train/val/test "
                f"{len(self.x_train)}/{len(self.x_val)}/{len(self.x_test)})")

    def calibration(self, n: int = 256, seed: int = 0) -> np.ndarray:
        """A reproducible subset of the training inputs, e.g. for quantization calibration."""
        rng = np.random.default_rng(seed)
        n = min(n, len(self.x_train))
        return self.x_train[rng.choice(len(self.x_train), n, replace=False)]

    def summary(self) -> dict:
        out = {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.x_train),
            "val": len(self.x_val),
            "test": len(self.x_test),
            "metric": self.metric,
        }
        if "labels" in self.meta:  # a task without labels (data.unlabelled): what the targets are, the augmentation
            out.update(labels=self.meta["labels"], augmentation=self.meta.get("augmentation"),
                       samples=self.meta.get("samples"))
        return out


def split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratification is not attempted: a seeded shuffle is enough for the sizes we target."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_hold = max(1, int(round(len(x) * fraction)))
    hold, keep = idx[:n_hold], idx[n_hold:]
    return x[keep], y[keep], x[hold], y[hold]


def make_task(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    source: str = "",
) -> Task:
    """Check labels, carve a validation split from train, and build the Task."""
    where = source or name
    y_train = check_labels(y_train, f"{where}: y_train")
    y_test = check_labels(y_test, f"{where}: y_test")
    if len(x_train) != len(y_train):
        raise EdgeslimError(f"{where}: x_train has {len(x_train)} samples but y_train has {len(y_train)}")
    if len(x_test) != len(y_test):
        raise EdgeslimError(f"{where}: x_test has {len(x_test)} samples but y_test has {len(y_test)}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise EdgeslimError(
            f"{where}: train samples have shape {x_train.shape[1:]} but test samples {x_test.shape[1:]}"
        )
    if any(d == 0 for d in x_train.shape[1:]):
        raise EdgeslimError(f"{where}: samples have shape {x_train.shape[1:]}, with an empty dimension")
    num_classes = int(y_train.max()) + 1
    if y_test.max() >= num_classes:
        raise EdgeslimError(
            f"{where}: y_test has label {int(y_test.max())} but y_train only covers 0..{num_classes - 1}"
        )
    if num_classes < 2:
        raise EdgeslimError(f"{where}: labels have a single class; classification needs at least 2")
    if len(x_train) < 3:
        raise EdgeslimError(f"{where}: {len(x_train)} training samples; at least 3 are needed (2 to train on, "
                            "1 to validate)")
    xt, yt, xv, yv = split(x_train.astype(np.float32), y_train, val_fraction, seed)
    return Task(name, xt, yt, xv, yv, x_test.astype(np.float32), y_test, num_classes)


def check_labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise EdgeslimError(f"{where}: labels must be 1-D class indices, got shape {y.shape}")
    if y.size == 0:
        raise EdgeslimError(f"{where}: no samples")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or np.issubdtype(y.dtype, np.complexfloating):
        raise EdgeslimError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise EdgeslimError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise EdgeslimError(f"{where}: labels out of range: found {int(y.min())}, labels must be >= 0")
    if y.max() > MAX_CLASSES:
        raise EdgeslimError(f"{where}: label {int(y.max())} is not a class index (labels are 0..C-1 with C at most "
                            f"{MAX_CLASSES:,})")
    return y.astype(np.int64)
