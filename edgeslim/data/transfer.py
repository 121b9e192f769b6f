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
from edgeslim.data.loaders import as_float_inputs, to_channels_first
from edgeslim.errors import EdgeslimError, choices


def generate_count(spec: str) -> int | None:
    """N of a `generate:N` spec (None for a file path); ValueError when N is not a positive count."""
    if not spec.startswith("generate:"):
        return None
    n = spec.split(":", 1)[1]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"transfer '{spec}': generate:N needs a positive sample count N")
    return int(n)


def load_transfer(spec: str, task_name: str, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Unlabelled inputs `(N, *input_shape)` as float32, checked for shape and NaNs."""
    where = f"transfer set '{spec}'"
    try:
        n = generate_count(spec)
    except ValueError as e:
        raise EdgeslimError(str(e)) from None
    if n is not None:
        if task_name not in GENERATORS:
            raise EdgeslimError(
                f"{where}: task '{task_name}' has no generator (tasks with one: {choices(GENERATORS)}); "
                "give an .npz or .npy file of unlabelled inputs instead"
            )
        x = GENERATORS[task_name](n, seed)
    else:
        raw = _read(Path(spec), where)
        # already in the task's layout (e.g. (N, C, L) sequences, which the image reader would take for
        # (N, H, W) and give a channel): keep it; otherwise bring it to channels-first
        same = tuple(raw.shape[1:]) == tuple(input_shape)
        x = as_float_inputs(raw, where) if same else to_channels_first(raw, where)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise EdgeslimError(
            f"{where}: samples have shape {tuple(x.shape[1:])}, the task's inputs {tuple(input_shape)}"
        )
    if len(x) == 0:
        raise EdgeslimError(f"{where}: no samples")
    return x


def default_ratio(n_transfer: int, n_train: int) -> int:
    """Transfer inputs per labelled sample in each step when the recipe does not say: the sizes' ratio,
    1 to 8, so one epoch sees each transfer input about once."""
    return min(8, max(1, round(n_transfer / max(1, n_train))))


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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EdgeslimError(f"{where}: not a readable {path.suffix} file ({e})") from None
    return np.asarray(arr)
