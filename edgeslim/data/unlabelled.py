"""A task without labels: the user's inputs, with the original model as the teacher (`run --inputs X.npz`).

The samples are split once, with the seed, into three disjoint parts: `train` (training, calibration,
Taylor gradients), `val` (every pick: best epoch, sensitivity ratios, INT8 format) and `test` (held out:
nothing trains, calibrates or picks on it; the stages' fidelity is reported on it). The targets `y_*` are the
original model's outputs, flattened and concatenated per sample (float32: `train.task_loss` then fits them
with MSE and `train.evaluate` scores by cosine). With fewer than `AUGMENT_BELOW` samples, the training part
is augmented (noise and small shifts of the training samples only; targets from the teacher) and the task's
`meta["augmented"]` says so.

A model with recurrent state (`run.streams`) reads the samples as one stream: `split_blocks` cuts it into
`STREAM_BLOCKS` contiguous blocks and gives whole blocks to each split (a block is a stream of its own,
from the .npz's state), so no held-out step is next to a training step of the same stretch by accident of a
permutation, and `stream_task` builds the task from the teacher run over each block with its state carried.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeslim.data.task import Task
from edgeslim.errors import EdgeslimError

AUGMENT_BELOW = 256  # samples: below this the training part is augmented up to it
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
STREAM_BLOCKS = 10  # a stream is cut into this many contiguous blocks (fewer when it is short)


def split_indices(n: int, seed: int, where: str = "--inputs") -> dict[str, np.ndarray]:
    """Disjoint train/val/test indices of `n` samples (a seeded permutation; val and test at least 1 each)."""
    if n < 3:
        raise EdgeslimError(f"{where}: {n} sample(s); at least 3 are needed (train, validation, held-out test)")
    idx = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    n_val = max(1, int(round(n * VAL_FRACTION)))
    if n - n_test - n_val < 1:
        n_val = n - n_test - 1
    return {"test": np.sort(idx[:n_test]), "val": np.sort(idx[n_test:n_test + n_val]),
            "train": np.sort(idx[n_test + n_val:])}


def split_blocks(n: int, seed: int, where: str = "--inputs", blocks: int = STREAM_BLOCKS) -> dict[str, list[np.ndarray]]:
    """Disjoint train/val/test lists of contiguous index blocks of a stream of `n` samples: the stream is cut into
    `blocks` (at most n // 2, at least 3) blocks of near-equal length, and the blocks are dealt to the splits as
    `split_indices` deals samples (seeded). Each block keeps its order: it is run as a stream."""
    if n < 6:
        raise EdgeslimError(f"{where}: {n} sample(s); a model with recurrent state needs at least 6 consecutive "
                            "samples (three streams of two: train, validation, held-out test)")
    k = max(3, min(blocks, n // 2))
    cuts = np.array_split(np.arange(n), k)
    parts = split_indices(k, seed, where)
    return {name: [cuts[b] for b in ids] for name, ids in parts.items()}


def augment(x: np.ndarray, n: int, seed: int, noise_cols: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """`x` plus noisy, shifted copies up to `n` samples: Gaussian noise at 3% of the data's spread and a shift
    of up to 2 positions along each of the last two axes (one axis for sequences). Returns (x, record).
    `noise_cols` (packed rows [N, width] of several inputs, `run.streams`): noise on those columns only (the
    float per-sample data, not states or integer ids) and no shift (a shift would move one input into another)."""
    if len(x) >= n:
        return x, {"augmented": False}
    rng = np.random.default_rng([seed, 17])
    scale = float(x.std() if noise_cols is None else (x[:, noise_cols].std() if noise_cols.any() else 0)) or 1.0
    extra = []
    for i in range(n - len(x)):
        s = x[i % len(x)].copy()
        if noise_cols is not None:
            s[noise_cols] += rng.normal(0, 0.03 * scale, int(noise_cols.sum())).astype(s.dtype)
            extra.append(s)
            continue
        for ax in range(max(0, s.ndim - 2), s.ndim):
            if s.shape[ax] > 4:
                s = np.roll(s, int(rng.integers(-2, 3)), axis=ax)
        s = s + rng.normal(0, 0.03 * scale, s.shape).astype(s.dtype)
        extra.append(s)
    out = np.concatenate([x, np.stack(extra)]).astype(x.dtype)
    how = ("Gaussian noise (3% of the data's std) on the per-sample float inputs" if noise_cols is not None else
           "Gaussian noise (3% of the data's std) and shifts of up to 2 positions")
    return out, {"augmented": True, "from": len(x), "to": len(out), "how": how}


def teacher_task(name: str, x: np.ndarray, teacher: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                 augment_below: int = AUGMENT_BELOW, noise_cols: np.ndarray | None = None) -> Task:
    """The Task of inputs `x` [N, ...] with `teacher(x) -> [N, D]` outputs as targets (module docstring)."""
    parts = split_indices(len(x), seed, name)
    xt, record = augment(x[parts["train"]], augment_below, seed, noise_cols)
    xv, xs = x[parts["val"]], x[parts["test"]]
    task = Task(name, xt, teacher(xt).astype(np.float32), xv, teacher(xv).astype(np.float32), xs,
                teacher(xs).astype(np.float32), num_classes=0, metric="fidelity")
    task.meta = {"labels": "none: the original model's outputs are the targets",
                 "splits": {k: v.tolist() for k, v in parts.items()}, "augmentation": record,
                 "samples": len(x)}
    return task


def stream_task(name: str, n: int, stream: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                teacher: Callable[[np.ndarray], np.ndarray], seed: int = 0, augment_below: int = AUGMENT_BELOW,
                noise_cols: np.ndarray | None = None) -> tuple[Task, dict[str, list[np.ndarray]]]:
    """The Task of a model with recurrent state over a stream of `n` samples: `stream(block indices) -> (rows,
    targets)` runs the original over one block with its state carried (rows: the packed inputs it was fed, its
    state included; targets: its outputs, flattened); `teacher(rows) -> targets` labels augmented rows (one step
    from the state in the row). Returns the task and its blocks per split (`split_blocks`)."""
    blocks = split_blocks(n, seed, name)
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for split, bl in blocks.items():
        got = [stream(b) for b in bl]
        xs[split] = np.concatenate([g[0] for g in got]).astype(np.float32)
        ys[split] = np.concatenate([g[1] for g in got]).astype(np.float32)
    xt, record = augment(xs["train"], augment_below, seed, noise_cols)
    yt = np.concatenate([ys["train"], teacher(xt[len(xs["train"]):]).astype(np.float32)]) if record["augmented"] \
        else ys["train"]
    task = Task(name, xt, yt, xs["val"], ys["val"], xs["test"], ys["test"], num_classes=0, metric="fidelity")
    task.meta = {"labels": "none: the original model's outputs are the targets, run over each block with its "
                           "recurrent state carried",
                 "splits": {k: np.concatenate(v).tolist() for k, v in blocks.items()},
                 "streams": {k: [[int(b[0]), int(b[-1]) + 1] for b in v] for k, v in blocks.items()},
                 "augmentation": record, "samples": n}
    return task, blocks
