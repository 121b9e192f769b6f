"""ONNX Runtime: one place that opens sessions (CPU provider; threads and optimisation level from
`ort_options.session_options`), runs them in batches, scores classifiers (`onnx_accuracy`, the one accuracy of
an ONNX model) and runs ONNX Runtime's offline graph optimisation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.ort_options import session_options
from edgeslim.onnxkit.scoring import OutputPart, Score, mean_row_cosine, score_stream  # noqa: F401


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
        if "topologically sorted" in msg and isinstance(model, bytes):
            # a rewrite beside an `If` left a node before what its subgraph reads from outside: sorted, retried
            import onnx

            from edgeslim.untrusted import sort_topologically

            m = onnx.load_from_string(model)
            if sort_topologically(m.graph):
                return session(m.SerializeToString(), threads, level)
        raise EdgeslimError(f"{where}: ONNX Runtime cannot load the model ({msg})") from None


# ONNX Runtime's input type strings -> the numpy dtype a batch is cast to (anything else: float32).
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(bool)": np.bool_}


def batched_outputs(sess, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Every output of `sess` over the samples `x` (fed to its first input, cast to that input's type), run
    `batch` samples at a time and concatenated. A model with a fixed batch B (leading dim an int > 0) gets
    exactly B samples per run: the last chunk is padded with zeros and the padding dropped."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    x = np.asarray(x).astype(_NP_TYPES.get(inp.type, np.float32), copy=False)
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append([np.asarray(o)[:n] for o in sess.run(None, {inp.name: chunk})])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))] if outs else []


def run_batched(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The first output of `sess` over `x` in batches (`batched_outputs`: fixed batches padded)."""
    return batched_outputs(sess, x, batch)[0]


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


def classifier_scores(sess, x: np.ndarray, *, num_classes: int | None = None, where: str = "",
                      batch: int = 256) -> np.ndarray:
    """The class scores [N, classes] (the first output) of an ONNX Runtime session over the samples `x`
    (`batched_outputs`: a fixed-batch model is fed exactly its batch). One line when the output is not
    [N, classes] or scores another number of classes than `num_classes`."""
    z = run_batched(sess, x, batch)
    out = sess.get_outputs()[0].name
    at = f"{where}: " if where else ""
    if z.ndim != 2 or z.shape[0] != len(x):
        raise EdgeslimError(f"{at}output '{out}' has shape {list(z.shape)}, not class scores [N, classes]: "
                            "accuracy needs a classifier (drop --task to measure it without accuracy)")
    if num_classes is not None and z.shape[1] != num_classes:
        raise EdgeslimError(f"{at}output '{out}' scores {z.shape[1]} classes but the task has {num_classes}")
    return z


def output_rows(sess, x: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """Every output of `sess` over the samples `x`, one row per sample and output: a list of [N, D_k] float64,
    one per output in the session's order. An output's batch axis need not be 0 (a recurrent state
    [layers, N, H]): it is the axis that is 1 at batch 1 and n at batch n. A batch fixed at 1 runs one sample a
    run and flattens each output whole; another fixed batch is read on axis 0 (`batched_outputs`)."""
    return output_rows_shapes(sess, x, batch)[0]


def output_rows_shapes(sess, x: np.ndarray, batch: int = 64) -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
    """`output_rows` and each output's shape at batch 1 (one row's values, in row order)."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    if fixed is not None and fixed != 1:
        outs = batched_outputs(sess, x, fixed)
        return ([np.asarray(o, np.float64).reshape(len(x), -1) for o in outs],
                [(1, *np.shape(o)[1:]) for o in outs])
    x = np.asarray(x).astype(_NP_TYPES.get(inp.type, np.float32), copy=False)
    if len(x) == 0:
        return [], []
    if fixed == 1:
        runs = [sess.run(None, {inp.name: x[i:i + 1]}) for i in range(len(x))]
        return ([np.stack([np.asarray(r[k], np.float64).reshape(-1) for r in runs]) for k in range(len(runs[0]))],
                [tuple(np.shape(o)) for o in runs[0]])
    one = [tuple(np.shape(o)) for o in sess.run(None, {inp.name: x[:1]})]
    axes: list[int | None] = [None] * len(one)
    rows: list[list[np.ndarray]] = [[] for _ in one]
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        for k, o in enumerate(sess.run(None, {inp.name: chunk})):
            o = np.asarray(o, np.float64)
            if axes[k] is None and n > 1:
                grew = [j for j in range(o.ndim) if len(one[k]) == o.ndim and one[k][j] == 1 and o.shape[j] == n]
                axes[k] = grew[0] if grew else 0
            rows[k].append(np.moveaxis(o, axes[k] or 0, 0).reshape(n, -1))
    return [np.concatenate(r) for r in rows], one


def sample_rows(sess, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Every output of `sess` over the samples `x`, one row per sample: [N, D] float64, the outputs flattened and
    concatenated per sample in the session's order (what a task without labels targets; `output_rows` per
    output)."""
    rows = output_rows(sess, x, batch)
    return np.concatenate(rows, 1) if rows else np.zeros((0, 0))


FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")


def onnx_score(model: Any, x: np.ndarray, y: np.ndarray, threads: int = 1,
               state_columns: dict[str, int] | None = None) -> Score:
    """The validation score (`onnxkit.scoring`) of an ONNX model (a path, serialized model or open session) on
    the samples `x` against the targets `y` of a task without labels (the original's outputs flattened and
    concatenated per sample in output order, [N, D], as `sample_rows` writes them): each output judged on its
    own, the worst counting; score outputs also by top-1 agreement (per position for [N, T, C]). With
    `state_columns` ({state output: its column in the packed input row}, `scoring.state_columns` of the run's
    layout) the rows that form streams are run with the model's own state carried (`scoring.score_stream`)."""
    sess = model if hasattr(model, "get_inputs") else session(model, threads=threads)
    if not len(x):
        return Score(1.0)
    feeds = state_columns or {}
    b = np.asarray(y, np.float64).reshape(len(y), -1)
    _, shapes = output_rows_shapes(sess, np.asarray(x)[:1], 64)
    outs = sess.get_outputs()
    parts = [OutputPart(o.name, s, o.type not in FLOAT_TYPES, feeds.get(o.name)) for o, s in zip(outs, shapes)]

    def step(rows: np.ndarray) -> np.ndarray:
        return np.concatenate(output_rows(sess, rows, 64), 1)

    return score_stream(step, np.asarray(x), b, parts)


def output_scores(model: Any, x: np.ndarray, y: np.ndarray, threads: int = 1, *,
                  state_columns: dict[str, int] | None = None) -> dict[str, float]:
    """Fidelity (0-1, 1: the same) of each output of an ONNX model on the samples `x` to the targets `y` of a task
    without labels, {output name: score}: `onnx_score`'s per output (a float output by the mean per-sample cosine,
    with several outputs the lower of that and the cosine over all of the output's values; score outputs also by
    top-1 agreement, per position for [N, T, C]; an integer or boolean output by the mean per-sample fraction of
    elements exactly equal)."""
    return onnx_score(model, x, y, threads, state_columns).by_output


def onnx_accuracy(model: Any, x: np.ndarray, y: np.ndarray, threads: int = 1, *, where: str = "",
                  num_classes: int | None = None, scores: list[np.ndarray] | None = None,
                  by_output: dict[str, float] | None = None, state_columns: dict[str, int] | None = None,
                  detail: dict | None = None) -> float:
    """Top-1 accuracy (fraction 0-1) of an ONNX classifier (a path, serialized model or open session) on
    `x`, `y`, run in ONNX Runtime; a fixed-batch model is fed exactly its batch (`batched_outputs`). With
    float `y` (a task without labels: the original model's outputs, flattened and concatenated per sample)
    the score of the worst output (`onnx_score`: each output judged on its own, mean per-sample cosine for a
    float output, the lower of that and top-1 agreement for score outputs; with `state_columns`, over the
    streams of `x` with the model's own state carried), so a pick "within N points of FP32" reads as fidelity
    of every output, a small state beside a big score included; `by_output` (a dict) receives every output's
    score, `detail` (a dict) what bound the score (`scoring.Score.notes`). With `scores` (a list), the class
    scores [N, classes] are appended to it."""
    sess = model if hasattr(model, "get_inputs") else session(model, threads=threads)
    if np.issubdtype(np.asarray(y).dtype, np.floating):
        got = onnx_score(sess, x, y, state_columns=state_columns)
        if by_output is not None:
            by_output.update(got.by_output)
        if detail is not None:
            detail.update(got.notes())
        return got.score
    z = classifier_scores(sess, x, num_classes=num_classes, where=where)
    if scores is not None:
        scores.append(z)
    return float((z.argmax(1) == np.asarray(y)).mean())


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
