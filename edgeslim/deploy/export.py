"""ONNX export with a parity check: ONNX Runtime must reproduce PyTorch's outputs within tolerance. Also
`reexport_onnx`: a model that is already ONNX, written again repaired and checked (`edgeslim export X.onnx`).
`to_onnx`: an ONNX file as is, or a model folder exported to a temporary one (the measurement core's
`measure.source.open_model` also keeps the PyTorch model)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeslim import models
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit.session import batched_outputs, run_all, session

OPSET = 17


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    check: np.ndarray | None = None,
    atol: float = 1e-3,
) -> dict:
    """Export `model` (batch dim dynamic) to `path`; if `check` inputs are given, compare outputs.
    The output is named `output`; a model that returns several gets one name each: a dict's keys, or `output_0`,
    `output_1`, ... for a tuple or list.

    Returns the parity figures: max absolute difference between PyTorch and ONNX Runtime.
    """
    from edgeslim.train import torch_threads, train_threads

    model = model.eval()
    dummy = torch.zeros(1, *input_shape)
    buf = io.BytesIO()
    # the trace runs the model once: on the threads training would pick (one for small models)
    with warnings.catch_warnings(), torch_threads(train_threads(model, tuple(input_shape), 1)):
        warnings.simplefilter("ignore")
        names = _output_names(model, dummy)
        # The TorchScript exporter: fast (tens of ms) and stable for the CNN/MLP layers edge models use.
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
            input_names=["input"], output_names=names,
            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    write_bytes(path, buf.getvalue())
    result: dict = {}
    if check is not None:
        result = export_parity(model, path, check, atol)
    return result


def _output_names(model: nn.Module, dummy: torch.Tensor) -> list[str]:
    """`output`, or one name per output of a model that returns several (`models.outputs.output_names`)."""
    from edgeslim.models.outputs import output_names

    with torch.no_grad():
        return output_names(model(dummy)) or ["output"]


def export_parity(model: nn.Module, path: Path, x: np.ndarray, atol: float = 1e-3) -> dict:
    """Max abs difference of ONNX Runtime vs PyTorch on `x` (output units; the worst output of a model that
    returns several); the PyTorch side runs on the threads training would pick for this model and batch
    (`train.train_threads`: one for small models, where a second thread only spins on a shared machine)."""
    from edgeslim.models.outputs import output_list
    from edgeslim.train import torch_threads, train_threads

    with torch.no_grad(), torch_threads(train_threads(model, tuple(x.shape[1:]), len(x))):
        out = model.eval()(torch.from_numpy(x.astype(np.float32)))
    refs = [o.numpy() for o in output_list(out)]
    diff = 0.0
    for ref, got in zip(refs, batched_outputs(session(path), x.astype(np.float32))):
        d = float(np.abs(ref - got).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 1.0
        if not np.isfinite(d) or d > atol * max(1.0, scale):
            raise EdgeslimError(
                f"{path}: ONNX Runtime output differs from PyTorch by {d:.3g} (tolerance {atol:g} x {scale or 1.0:.3g})"
            )
        diff = max(diff, d)
    return {"parity_max_abs_diff": diff}


def reexport_onnx(src: Path, out: Path, inputs: Path | None = None, shapes: tuple[str, ...] | list[str] = ()) -> dict:
    """`edgeslim export X.onnx --format onnx`: a model that is already ONNX, written again repaired (Constant
    weights lifted into initializers, incl. If/Loop bodies; the opset kept) and checked: every output must
    match the input model on its inputs (`inputs` .npz or synthetic, `shapes`) within float rounding."""
    from edgeslim.onnxkit.inputs import input_specs, make_feeds
    from edgeslim.onnxkit.load import load_and_repair

    loaded = load_and_repair(src, upgrade=False)
    fd = make_feeds(input_specs(loaded.model), inputs, shapes, n=4)
    data = loaded.model.SerializeToString()
    ref = run_all(session(src), fd.feeds, str(src))
    got = run_all(session(data), fd.feeds, str(out))
    diff = max((float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                for ra, rb in zip(ref, got) for a, b in zip(ra, rb) if np.size(a)), default=0.0)
    scale = max((float(np.abs(np.asarray(a, np.float64)).max()) for ra in ref for a in ra if np.size(a)), default=1.0)
    if not np.isfinite(diff) or diff > 1e-5 * max(1.0, scale):
        raise EdgeslimError(f"{src}: the repaired model's outputs differ by {diff:.3g}; not written")
    write_bytes(out, data)
    return {"format": "onnx", "precision": "as the input", "path": str(out), "size_bytes": len(data),
            "parity_max_abs_diff": diff, "parity_reference": "the input ONNX model", "repairs": loaded.notes,
            "input_source": fd.source, "warnings": fd.warnings}


def to_onnx(p: Path) -> tuple[Path, Callable[[], None] | None]:
    """(ONNX path, cleanup or None) for an ONNX file or an edgeslim model folder (exported to a temp file)."""
    p = Path(p)
    if p.is_file() and p.suffix == ".onnx":
        from edgeslim.untrusted import check_onnx_file

        check_onnx_file(p)  # corrupt files and external data outside the folder: one line
        return p, None
    staged = models.io.onnx_stage(p)
    if staged is not None:  # a stage of a run on an ONNX file: its model.onnx
        return staged[0], None
    if p.is_dir() and (p / "spec.json").is_file():
        import shutil
        import tempfile

        net, spec = models.load_model(p)
        tmp = Path(tempfile.mkdtemp(prefix="edgeslim-fit-"))
        out = tmp / "model.onnx"
        export_onnx(net, tuple(spec["input_shape"]), out)
        return out, lambda: shutil.rmtree(tmp, ignore_errors=True)
    raise EdgeslimError(f"{p}: not an ONNX file or edgeslim model folder (with spec.json)")
