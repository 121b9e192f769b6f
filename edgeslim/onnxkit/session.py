"""ONNX Runtime: one place that sets up sessions (CPU provider, threads, optimisation level), runs them in
batches, and runs ONNX Runtime's offline graph optimisation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeslim.errors import EdgeslimError, choices

# ONNX Runtime graph optimisation levels by the names edgeslim's options use.
LEVELS = ("disable", "basic", "extended", "all")


def ort_level(level: str) -> Any:  # -> ort.GraphOptimizationLevel
    import onnxruntime as ort

    table = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in table:
        raise EdgeslimError(f"unknown optimisation level '{level}'; valid: {choices(LEVELS)}")
    return table[level]


def session_options(threads: int = 1, level: str = "all") -> Any:  # -> ort.SessionOptions
    """Quiet options with `threads` intra-op threads (one inter-op thread) at optimisation `level`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort_level(level)
    return opts


def session(model: str | Path | bytes, threads: int = 1, level: str = "all"):  # -> ort.InferenceSession
    """A CPU session of an ONNX file (or serialized model). `threads=1` by default: edge targets are
    small and timings stay repeatable."""
    import onnxruntime as ort

    where = "<in-memory model>" if isinstance(model, bytes) else str(model)
    opts = session_options(threads, level)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several private exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeslimError(f"{where}: ONNX Runtime cannot load the model ({msg})") from None


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


def run_all(sess, feeds: Sequence[dict[str, np.ndarray]], where: str = "") -> list[list[np.ndarray]]:
    """Outputs of `sess` for every feed; a failure is the user's model/data problem, said in one line."""
    out: list[list[np.ndarray]] = []
    run_into(sess, feeds, out, where)
    return out


def iter_outputs(sess, feeds: Sequence[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """Outputs of `sess` feed by feed, as they are asked for (memory: one feed's outputs)."""
    for f in feeds:
        yield sess.run(None, f)


def run_into(sess, feeds: Sequence[dict[str, np.ndarray]], into: Any, where: str = "") -> None:
    """Append the outputs of `sess` for every feed to `into` (a list, or an `onnxkit.lazy.Spill`, which keeps
    them on disk), one feed at a time; a failure is said in one line as in `run_all`."""
    for i, f in enumerate(feeds):
        try:
            into.append(sess.run(None, f))
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgeslimError(f"{where + ': ' if where else ''}the model fails on input sample {i} ({msg[:300]}); "
                                "check --inputs/--shape") from None


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, threads: int = 1) -> float:
    """Top-1 accuracy (fraction 0-1) of an ONNX classifier, run in ONNX Runtime. With float `y` (a task without
    labels: the original model's outputs, flattened and concatenated per sample) the mean per-sample cosine of
    the model's outputs to them (0-1, 1: the same), so a pick "within N points of FP32" reads as fidelity."""
    sess = session(path, threads=threads)
    if np.issubdtype(np.asarray(y).dtype, np.floating):
        name = sess.get_inputs()[0].name
        step = 1 if isinstance(sess.get_inputs()[0].shape[0], int) else 64
        rows = [np.concatenate([np.asarray(o, np.float64).reshape(len(x[i:i + step]), -1)
                                for o in sess.run(None, {name: x[i:i + step].astype(np.float32)})], 1)
                for i in range(0, len(x), step)]
        a, b = np.concatenate(rows), np.asarray(y, np.float64).reshape(len(y), -1)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        return float(np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-30)).mean())
    out = run_batched(sess, x.astype(np.float32))
    return float((out.argmax(1) == y).mean())


def ort_optimize(model: str | Path | onnx.ModelProto, level: str = "basic") -> onnx.ModelProto:
    """ONNX Runtime's offline graph optimisation at `level`: the graph a session builds, saved back.

    'basic' keeps standard ONNX ops only (constant folding, redundant node removal), so the result stays
    portable and the INT8 quantizers still recognise every op; 'extended' adds fusions into ONNX Runtime
    contrib ops and 'all' layout transforms specific to this CPU. Raises what ONNX Runtime raises.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "in.onnx", Path(td) / "out.onnx"
        if isinstance(model, onnx.ModelProto):
            src.write_bytes(model.SerializeToString())
        else:
            src = Path(model)
        opts = session_options(level=level)
        opts.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(dst))


def kernel_signature(model: str | Path | bytes, level: str = "extended") -> str:
    """A short hash of the kernels ONNX Runtime will run for `model`: the op types (with domains) of the
    graph a session builds at `level` (constant folding included, so int8/fp16 weights stored with a
    Cast/Mul decode fold back into float constants), subgraphs included, plus the dtypes and shapes of the
    constants. Two files with the same signature run the same kernels on the same shapes: a timing
    difference between them is noise of separate sessions, not a property of the files. Empty when ORT
    cannot write the optimised graph (then timing alone decides)."""
    import hashlib
    import json

    from edgeslim.onnxkit.graph import graphs

    try:
        m = ort_optimize(onnx.load_from_string(model) if isinstance(model, bytes) else model, level)
    except Exception:  # noqa: BLE001 - a signature is an optimisation of the choice, never a failure
        return ""
    ops, consts = [], []
    for g in graphs(m.graph):
        ops.append([f"{n.domain}:{n.op_type}" for n in g.node])
        consts.append(sorted(f"{t.data_type}:{tuple(t.dims)}" for t in g.initializer))
    return hashlib.sha1(json.dumps([ops, consts]).encode()).hexdigest()[:16]
