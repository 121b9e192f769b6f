"""Transfer sets: unlabelled inputs for knowledge distillation.

A teacher can label inputs nobody labelled; a student trained to match it there learns more of the
teacher's function than the labelled set shows. Sources: a user's `.npz` (array `x`, or its only array)
or `.npy` file of inputs shaped like the task's, or `generate:N` for a built-in task with a generator
(`mnist1d`). Labels in the file, if any, are ignored.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgeslim.data.builtin import GENERATORS
from edgeslim.data.loaders import to_channels_first
from edgeslim.errors import EdgeslimError, choices


def load_transfer(spec: str, task_name: str, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Unlabelled inputs `(N, *input_shape)` as float32, checked for shape and NaNs."""
    where = f"transfer set '{spec}'"
    if spec.startswith("generate:"):
        n_text = spec.split(":", 1)[1]
        if not n_text.isdigit() or int(n_text) < 1:
            raise EdgeslimError(f"{where}: 'generate:N' needs a positive sample count N, got '{n_text}'")
        if task_name not in GENERATORS:
            raise EdgeslimError(
                f"{where}: task '{task_name}' has no generator (tasks with one: {choices(GENERATORS)}); "
                "give an .npz or .npy file of unlabelled inputs instead"
            )
        x = GENERATORS[task_name](int(n_text), seed)
    else:
        raw = _read(Path(spec), where)
        if tuple(raw.shape[1:]) == tuple(input_shape) and raw.ndim == 3:
            raw = raw[:, None]  # (N, C, L) sequences: keep the layout, the image reader would add a channel
            x = to_channels_first(raw, where)[:, 0]
        else:
            x = to_channels_first(raw, where)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise EdgeslimError(
            f"{where}: samples have shape {tuple(x.shape[1:])}, the task's inputs {tuple(input_shape)}"
        )
    if len(x) == 0:
        raise EdgeslimError(f"{where}: no samples")
    return x


def _read(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise EdgeslimError(f"{where}: no such file (give an .npz, .npy or generate:N)")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.files)
                if "x" in keys:
                    arr = f["x"]
                elif len(keys) == 1:
                    arr = f[keys[0]]
                else:
                    raise EdgeslimError(f"{where}: expected an array 'x' (or a single array), found {', '.join(keys)}")
        else:
            raise EdgeslimError(f"{where}: unsupported file type '{path.suffix}'; use .npz or .npy")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EdgeslimError(f"{where}: not a readable {path.suffix} file ({e})") from None
    return np.asarray(arr)
