"""A stage's predictions on the test split, kept so compression's effect on behaviour can be shown.

The measurement core (`core.measure_model(..., predictions=PATH)`) computes a stage's accuracy from its
ONNX model's outputs on the test split; for classifiers (outputs of shape (N, classes)) `save_predictions`
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


def save_predictions(out: Path, z: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Save a classifier's outputs `z` [N, classes] and the labels to `out` (other outputs: nothing saved)."""
    if z.ndim == 2 and z.shape[1] == num_classes and num_classes > 1:
        buf = io.BytesIO()
        np.savez_compressed(buf, logits=z.astype(np.float32), labels=np.asarray(y, np.int64))
        write_bytes(out, buf.getvalue())
