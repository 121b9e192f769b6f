"""ONNX export with a parity check: ONNX Runtime must reproduce PyTorch's outputs within tolerance. Also
`to_onnx`: an ONNX file as is, or a model folder exported to a temporary one (for commands taking either)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.session import run_batched, session

OPSET = 17


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    check: np.ndarray | None = None,
    atol: float = 1e-3,
) -> dict:
    """Export `model` (batch dim dynamic) to `path`; if `check` inputs are given, compare outputs.

    Returns the parity figures: max absolute difference between PyTorch and ONNX Runtime.
    """
    model = model.eval()
    dummy = torch.zeros(1, *input_shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: fast (tens of ms) and stable for the CNN/MLP layers edge models use.
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    write_bytes(path, buf.getvalue())
    result: dict = {}
    if check is not None:
        result = parity(model, path, check, atol)
    return result


def parity(model: nn.Module, path: Path, x: np.ndarray, atol: float = 1e-3) -> dict:
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x.astype(np.float32))).numpy()
    got = run_batched(session(path), x.astype(np.float32))
    diff = float(np.abs(ref - got).max())
    scale = float(np.abs(ref).max()) or 1.0
    if not np.isfinite(diff) or diff > atol * max(1.0, scale):
        raise EdgeslimError(
            f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (tolerance {atol:g} x {scale:.3g})"
        )
    return {"parity_max_abs_diff": diff}


def to_onnx(p: Path) -> tuple[Path, Callable[[], None] | None]:
    """(ONNX path, cleanup or None) for an ONNX file or an edgeslim model folder (exported to a temp file)."""
    p = Path(p)
    if p.is_file() and p.suffix == ".onnx":
        from edgeslim.untrusted import check_onnx_file

        check_onnx_file(p)  # corrupt files and external data outside the folder: one line
        return p, None
    if p.is_dir() and (p / "spec.json").is_file():
        import shutil
        import tempfile

        from edgeslim import models

        net, spec = models.load_model(p)
        tmp = Path(tempfile.mkdtemp(prefix="edgeslim-fit-"))
        out = tmp / "model.onnx"
        export_onnx(net, tuple(spec["input_shape"]), out)
        return out, lambda: shutil.rmtree(tmp, ignore_errors=True)
    raise EdgeslimError(f"{p}: not an ONNX file, .tflite file or edgeslim model folder (with spec.json)")
