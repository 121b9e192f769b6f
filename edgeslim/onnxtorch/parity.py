"""Parity of a converted module with the ONNX model it came from: max absolute error per output (output units),
ONNX Runtime (one thread, all graph optimisations) vs the module in eval mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgeslim.errors import EdgeslimError


def torch_outputs(module: nn.Module, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The module's outputs (eval mode, no grad) on `feeds` given by input name, in input order `names`."""
    missing = [n for n in names if n not in feeds]
    if missing:
        raise EdgeslimError(f"no input array for {', '.join(missing)}; the model takes {', '.join(names)}")
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.array(feeds[n], copy=True)) for n in names])
    finally:
        module.train(was)
    return [o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| in float64 (inf when the shapes differ; 0 for empty arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def conversion_parity(onnx_path: str | Path | onnx.ModelProto, module: nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error per output name of `module` vs ONNX Runtime running `onnx_path` on `feeds`."""
    from edgeslim.onnxkit.session import session

    src = onnx_path.SerializeToString() if isinstance(onnx_path, onnx.ModelProto) else onnx_path
    sess = session(src)
    names = [i.name for i in sess.get_inputs()]
    ref = sess.run(None, {n: feeds[n] for n in names if n in feeds})
    got = torch_outputs(module, list(getattr(module, "input_names", names)), feeds)
    outs = [o.name for o in sess.get_outputs()]
    return {name: max_abs(r, g) for name, r, g in zip(outs, ref, got)}
