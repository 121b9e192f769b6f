"""A stage's predictions on the test split, kept so compression's effect on behaviour can be shown.

The pipeline measures each stage's accuracy by running its ONNX model over the test split; this runs it
once, computes the accuracy from the outputs and, for classifiers (outputs of shape (N, classes)),
writes them beside the model:

    stages/NN_<pass>/predictions.npz   logits (N, C) float32, labels (N,) int64

`edgeslim.report.behaviour` compares them with the baseline's (flipped predictions, per-class
accuracy, calibration). Written atomically; a few tens of KB for the built-in tasks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.report.behaviour import PREDICTIONS as FILE
from edgeslim.report.behaviour import load_predictions as load

__all__ = ["FILE", "accuracy_and_predictions", "load", "outputs"]


def outputs(onnx_path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """The model's first output over `x` (batched), as ONNX Runtime computes it."""
    return run_batched(session(onnx_path, threads=threads), x.astype(np.float32))


def accuracy_and_predictions(onnx_path: Path, x: np.ndarray, y: np.ndarray, num_classes: int,
                             out: Path | None, threads: int = 1) -> float:
    """Top-1 accuracy (fraction 0-1) of the ONNX model on (x, y); with `out`, the outputs of a classifier
    are also saved there (see the module docstring). Same figure as `onnxkit.session.onnx_accuracy`."""
    z = outputs(onnx_path, x, threads)
    acc = float((z.argmax(1) == y).mean())
    if out is not None:
        save_predictions(out, z, y, num_classes)
    return acc


def save_predictions(out: Path, z: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Save a classifier's outputs `z` [N, classes] and the labels to `out` (other outputs: nothing saved)."""
    if z.ndim == 2 and z.shape[1] == num_classes and num_classes > 1:
        buf = io.BytesIO()
        np.savez_compressed(buf, logits=z.astype(np.float32), labels=np.asarray(y, np.int64))
        write_bytes(out, buf.getvalue())
