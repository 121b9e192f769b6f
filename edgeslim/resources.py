"""Memory checked up front: a job that cannot fit says so, with the option that makes it fit, before it
starts instead of being killed by the kernel an hour in.

Estimates are deliberately simple upper bounds (float32 everywhere, units: bytes):
- training: weights x 4 (weights, gradients, two Adam moments) + batch x per-sample activations x 3
  (kept for backward, their gradients, temporaries); evaluation runs in batches of up to 512 without
  gradients, so its peak is 512 x the largest layer output x 2;
- ONNX Runtime static calibration: 2 x the samples of ONE feed x the sum of every activation of one
  sample: the feeds stay on disk (`onnxkit.lazy`) and ORT's calibrators reduce the ranges feed by feed
  (`onnxkit.quant.FeedReader`), so the number of samples does not count (it did before: "needs about
  21.1 GiB of memory for 32 samples" for an 800x608 layout detector);
- an .npz file: the sum of its arrays' sizes, read from the array headers without loading the data.
A job is refused when it needs more than `LIMIT` of the memory the kernel reports available
(`MemAvailable` on Linux); where that is unknown the check is skipped.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError

LIMIT = 0.9  # fraction of the available memory a job may plan to use
EVAL_BATCH = 512  # train.predict's batch
CALIB_BATCH = 16  # samples per calibration feed (onnxkit.quant.array_feeds)
CALIB_FACTOR = 2  # one feed's activations kept by ORT's calibrator + the session's own buffers


def available_bytes() -> int | None:
    """Memory the kernel can give without swapping (bytes), or None when the platform does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def require_memory(need: int, what: str, hint: str) -> None:
    """Refuse `what` in one line when it needs more than LIMIT x the available memory."""
    avail = available_bytes()
    if avail is None or need <= LIMIT * avail:
        return
    raise EdgeslimError(f"{what} needs about {_mib(need)} of memory but only {_mib(avail)} is available; {hint}")


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(sum, largest) of the float32 outputs of every leaf module for ONE sample, in bytes."""
    from edgeslim.models.probe import probe

    sizes: list[int] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                sizes.append(4 * t.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    try:
        probe(model, tuple(input_shape), [m.register_forward_hook(hook) for m in leaves])
    except Exception:  # a model the probe cannot run on zeros: nothing to estimate from here
        return 0, 0
    return sum(sizes), max(sizes, default=0)


def check_training(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, desc: str,
                   hint: str = "lower --batch-size (recipes: finetune: {batch_size: N})") -> int:
    """Refuse a training whose estimated peak memory does not fit; returns the estimate (bytes)."""
    weights = sum(4 * p.numel() for p in model.parameters())
    total, largest = activation_bytes(model, input_shape)
    need = 4 * weights + max(3 * batch_size * total, 2 * EVAL_BATCH * largest)
    require_memory(need, f"{desc} (batch size {batch_size})", hint)
    return need


def npz_bytes(path: Path) -> int:
    """Sum of the arrays' sizes in an .npz (bytes), from their headers; 0 when it cannot tell."""
    total = 0
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    except Exception:  # not a zip, a bad header: the loader says what is wrong with the file
        return 0
    return total


def check_npz(path: Path, what: str, hint: str) -> None:
    require_memory(npz_bytes(path), f"{what} {path}", hint)


def check_calibration_memory(per_sample: Callable[[], int], what: str, hint: str, batch: int = 1) -> int:
    """Refuse a static INT8 calibration whose one feed of `batch` samples would not fit (see module
    docstring): calibration streams the feeds, so its peak depends on the batch, not on the number of
    samples. `per_sample` gives one sample's summed activations in bytes (the arena planner's naive sum,
    which lives above this layer); a graph it cannot size gets no check. Returns the estimate (bytes, 0
    when there is none)."""
    try:
        one = int(per_sample())
    except Exception:  # a graph the planner cannot size: no estimate
        return 0
    need = CALIB_FACTOR * batch * one
    require_memory(need, f"calibrating {what} ({batch} sample{'s' if batch != 1 else ''} at a time)", hint)
    return need


def check_recipe(steps: list, finetune: object, model: nn.Module, input_shape: tuple[int, ...], n_train: int) -> None:
    """Before a run writes anything: every stage's fine-tuning batch and calibration set must fit.
    `steps` are the recipe's (name, config, line) steps; estimates from the starting model (passes only
    make it smaller)."""
    weights = sum(4 * p.numel() for p in model.parameters())
    total, largest = activation_bytes(model, input_shape)
    for s in steps:
        fields = type(s.config).model_fields
        ft = getattr(s.config, "finetune", None) or getattr(s.config, "train", None) or finetune
        batch = int(getattr(ft, "batch_size", 0) or 0)
        if ("finetune" in fields or "train" in fields) and batch and getattr(ft, "epochs", 0):  # passes that train
            need = 4 * weights + max(3 * batch * total, 2 * EVAL_BATCH * largest)
            require_memory(need, f"{s.name} (recipe line {s.line}) fine-tuning with batch size {batch}",
                    "lower batch_size in its finetune block")
        n = getattr(s.config, "calibration_samples", None)
        if n:  # calibration streams feeds of CALIB_BATCH samples: the batch, not the count, sets the peak
            b = min(int(n), n_train, CALIB_BATCH)
            require_memory(CALIB_FACTOR * b * total, f"{s.name} (recipe line {s.line}) calibrating {b} samples at a time",
                    "use a smaller model input")


def peak_rss() -> dict[str, int]:
    """Peak resident set size so far, in bytes: `self` (this process) and `children` (the largest child
    process waited for, e.g. a worker; 0 when none), from getrusage's ru_maxrss (KiB on Linux, bytes on
    macOS). Empty where the platform has no getrusage."""
    try:
        import resource
        import sys
    except ImportError:  # Windows
        return {}
    unit = 1 if sys.platform == "darwin" else 1024
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit}


def peak_rss_line() -> str:
    """'peak RSS 1.2 GiB (children 300.0 MiB)': what `optimize` and `run` print last."""
    p = peak_rss()
    if not p:
        return "peak RSS: not available on this platform"
    kids = f" (child processes: {_mib(p['children'])})" if p["children"] else ""
    return f"peak RSS {_mib(p['self'])}{kids}"
