"""Tasks: built-in ones by name, users' data by path."""

from __future__ import annotations

from pathlib import Path

from edgeslim.data.builtin import BUILTIN
from edgeslim.data.loaders import load_cifar_bin, load_csv, load_image_folder, load_npz_task
from edgeslim.data.task import Task
from edgeslim.errors import EdgeslimError, choices

__all__ = ["Task", "load_task", "BUILTIN"]

_CACHE: dict[tuple[str, int], Task] = {}


def load_task(spec: str, seed: int = 0) -> Task:
    """`spec` is a built-in name (`digits`, `mnist1d`) or a path: `.npz`, `.csv`, an image folder,
    or a folder in the CIFAR-10 binary layout."""
    key = (spec, seed)
    if key in _CACHE:
        return _CACHE[key]
    if spec in BUILTIN:
        task = BUILTIN[spec][0](seed)
    else:
        p = Path(spec)
        if not p.exists():
            raise EdgeslimError(
                f"unknown task '{spec}': not a built-in ({choices(BUILTIN)}) and no such file or folder"
            )
        if p.is_file() and p.suffix == ".npz":
            task = load_npz_task(p, seed)
        elif p.is_file() and p.suffix == ".csv":
            task = load_csv(p, seed)
        elif p.is_dir() and any(p.glob("data_batch_*.bin")):
            task = load_cifar_bin(p, seed)
        elif p.is_dir():
            task = load_image_folder(p, seed)
        else:
            raise EdgeslimError(f"{p}: unsupported data format; use .npz, .csv, an image folder or CIFAR-10 .bin")
    _CACHE[key] = task
    return task
