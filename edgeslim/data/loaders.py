"""Loaders for users' own data in plain formats: npz, image folders, CSV, CIFAR-10 binary batches.

Every failure names the file (and key or column) and what was expected.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgeslim.data.task import Task, make_task, split
from edgeslim.errors import EdgeslimError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CHANNELS = (1, 3, 4)
SIGNAL_MIN_LENGTH = 16  # (N, C, L) with C in CHANNELS and L >= this is a 1-D signal, not an image


def to_channels_first(x: np.ndarray, where: str) -> np.ndarray:
    """Normalise an input array to float32 `(N, C, H, W)`, `(N, C, L)` or `(N, F)`.

    Images arrive as `(N,H,W)`, `(N,H,W,C)` or `(N,C,H,W)`; 1-D signals as `(N,C,L)` with C in 1, 3 or 4
    channels and L at least 16 samples (a 1-row or 3-row "image" that long is a signal); uint8 is scaled
    to [0, 1].
    """
    x = as_float_inputs(x, where)
    if x.ndim == 2:
        pass  # (N, F) feature vectors
    elif x.ndim == 3 and x.shape[1] in CHANNELS and x.shape[2] >= SIGNAL_MIN_LENGTH:
        pass  # (N, C, L) signals, e.g. mnist1d's (N, 1, 40)
    elif x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4:
        if x.shape[1] in CHANNELS and x.shape[-1] not in CHANNELS:
            pass  # already NCHW
        elif x.shape[-1] in CHANNELS:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW
        else:
            raise EdgeslimError(
                f"{where}: cannot tell the channel axis of shape {x.shape}; expected (N,H,W), "
                "(N,H,W,C) or (N,C,H,W) with C in 1, 3 or 4"
            )
    else:
        raise EdgeslimError(
            f"{where}: expected (N,F), (N,H,W), (N,H,W,C) or (N,C,H,W) inputs, got shape {x.shape}"
        )
    return x


def as_float_inputs(x: np.ndarray, where: str) -> np.ndarray:
    """A numeric array as float32 (uint8 scaled to [0, 1]), rejected if it holds NaN or infinities.
    The layout is left alone."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise EdgeslimError(f"{where}: expected a numeric array, got dtype {x.dtype}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    if not np.all(np.isfinite(x)):
        raise EdgeslimError(f"{where}: inputs contain NaN or infinite values")
    return x


def load_npz_task(path: Path, seed: int = 0, test_fraction: float = 0.2) -> Task:
    from edgeslim.resources import check_npz

    check_npz(path, "loading the data set", "use a smaller file (a subset of the samples)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EdgeslimError(f"{path}: not a readable .npz file ({e})") from None
    keys = set(arrays)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        xtr = to_channels_first(arrays["x_train"], f"{path}: key 'x_train'")
        xte = to_channels_first(arrays["x_test"], f"{path}: key 'x_test'")
        ytr, yte = arrays["y_train"], arrays["y_test"]
    elif {"x", "y"} <= keys:
        x = to_channels_first(arrays["x"], f"{path}: key 'x'")
        y = np.asarray(arrays["y"])
        if len(x) != len(y):
            raise EdgeslimError(f"{path}: key 'x' has {len(x)} samples but key 'y' has {len(y)}")
        xtr, ytr, xte, yte = split(x, y, test_fraction, seed + 7919)
    else:
        raise EdgeslimError(
            f"{path}: missing keys; expected x_train, y_train, x_test, y_test (or x, y), found "
            f"{', '.join(sorted(keys)) or 'none'}"
        )
    return make_task(path.stem, xtr, ytr, xte, yte, seed=seed, source=str(path))


def load_image_folder(path: Path, seed: int = 0, test_fraction: float = 0.2) -> Task:
    """One sub-folder per class; images resized to the first image's size (PIL, a matplotlib dependency)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise EdgeslimError(f"{path}: an image folder needs one sub-folder per class, at least 2 (found {len(classes)})")
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        imgs = sorted(p for p in (path / c).iterdir() if p.suffix.lower() in IMAGE_EXT)
        if not imgs:
            raise EdgeslimError(f"{path / c}: class folder has no images ({', '.join(sorted(IMAGE_EXT))})")
        files += [(p, label) for p in imgs]
    images: list[Image.Image] = []
    for p, _ in files:
        try:
            images.append(Image.open(p))
            images[-1].load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
            raise EdgeslimError(f"{p}: not a readable image ({' '.join(str(e).split())})") from None
    gray = all(im.mode in ("1", "L", "I", "I;16", "F") for im in images)
    mode = "L" if gray else "RGB"
    size = images[0].size
    arr = np.stack([np.asarray(im.convert(mode).resize(size)) for im in images])  # (N,H,W) or (N,H,W,3)
    x = to_channels_first(arr.astype(np.uint8), str(path))
    y = np.array([label for _, label in files])
    xtr, ytr, xte, yte = split(x, y, test_fraction, seed + 7919)
    task = make_task(path.name, xtr, ytr, xte, yte, seed=seed, source=str(path))
    task.meta["classes"] = classes
    return task


def load_csv(path: Path, seed: int = 0, test_fraction: float = 0.2, label_column: str | None = None) -> Task:
    """Numeric feature columns plus one label column (`label`, `class`, `target` or `y`, or the one named)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark is fine
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EdgeslimError(f"{path}: cannot read CSV ({' '.join(str(e).split())})") from None
    if len(rows) < 3:
        raise EdgeslimError(f"{path}: a CSV task needs a header row and at least 2 data rows")
    header = [h.strip() for h in rows[0]]
    names = [label_column] if label_column else ["label", "class", "target", "y"]
    col = next((header.index(n) for n in names if n in header), None)
    if col is None:
        raise EdgeslimError(
            f"{path}: no label column; expected one named {' or '.join(names)}, found {', '.join(header)}"
        )
    feats, labels_raw = [], []
    for i, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if len(r) != len(header):
            raise EdgeslimError(f"{path}:{i}: row has {len(r)} columns, header has {len(header)}")
        try:
            feats.append([float(v) for j, v in enumerate(r) if j != col])
        except ValueError:
            raise EdgeslimError(f"{path}:{i}: non-numeric feature value") from None
        labels_raw.append(r[col].strip())
    try:
        y = np.array([int(v) for v in labels_raw])
        classes = None
    except ValueError:  # string labels: map sorted names to indices
        classes = sorted(set(labels_raw))
        y = np.array([classes.index(v) for v in labels_raw])
    x = to_channels_first(np.array(feats, np.float32), str(path))
    xtr, ytr, xte, yte = split(x, y, test_fraction, seed + 7919)
    task = make_task(path.stem, xtr, ytr, xte, yte, seed=seed, source=str(path))
    if classes:
        task.meta["classes"] = classes
    return task


CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_cifar_bin(p: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(p, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise EdgeslimError(
            f"{p}: size {raw.size} bytes is not a multiple of the CIFAR-10 record ({CIFAR_RECORD} bytes)"
        )
    rec = raw.reshape(-1, CIFAR_RECORD)
    y = rec[:, 0].astype(np.int64)
    if y.max() > 9:
        raise EdgeslimError(f"{p}: label {int(y.max())} out of range 0..9 for the CIFAR-10 layout")
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def load_cifar_bin(path: Path, seed: int = 0) -> Task:
    """A folder with `data_batch_*.bin` and `test_batch.bin` (the CIFAR-10 binary version)."""
    train_files = sorted(path.glob("data_batch_*.bin"))
    test_file = path / "test_batch.bin"
    if not train_files or not test_file.exists():
        raise EdgeslimError(f"{path}: CIFAR-10 binary layout needs data_batch_*.bin and test_batch.bin")
    parts = [_read_cifar_bin(p) for p in train_files]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_bin(test_file)
    return make_task(
        path.name, to_channels_first(xtr, str(path)), ytr, to_channels_first(xte, str(path)), yte,
        seed=seed, source=str(path),
    )
