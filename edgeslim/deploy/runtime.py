"""ONNX Runtime sessions and batched inference, shared by measurement and parity checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError


def session(path: str | Path, threads: int = 1, level: str = "all"):  # -> ort.InferenceSession
    """A CPU session. `threads=1` by default: edge targets are small and timings stay repeatable."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several private exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeslimError(f"{path}: ONNX Runtime cannot load the model ({msg})") from None


def run_batched(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run the first input/output of `sess` over `x` in batches; returns the concatenated output."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    batch = fixed or batch  # a model exported with a fixed batch gets exactly that many (the last padded)
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(sess.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outs)


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, threads: int = 1) -> float:
    """Top-1 accuracy (fraction 0-1) of an ONNX classifier, run in ONNX Runtime."""
    out = run_batched(session(path, threads=threads), x.astype(np.float32))
    return float((out.argmax(1) == y).mean())
