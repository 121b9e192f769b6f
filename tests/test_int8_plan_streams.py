"""The INT8 plan of a model with recurrent state judges fidelity over the validation streams, the state carried
(`quant.stream_eval`), as the candidates it builds are judged afterwards (issue 23: silero VAD's plan believed one
float layer gave cosine 0.9978 one step; over the streams its candidate scored 0.977 and lost).

A tiny recurrent model with the packed interface ('packed' [N, D + H] -> 'score' [N, K], 'h_new' [N, H]):
h_new = h @ a + tanh(x @ bx), score = h_new @ w, with a slow state (spectral radius 0.99), so an error in the
state update is small for one step from the teacher's state and grows along a stream.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from rnn_graphs import packed_rnn

from edgeslim.data.unlabelled import stream_task
from edgeslim.onnxkit.session import session
from edgeslim.quant import int8_plan
from edgeslim.quant.stream_eval import StreamData, plan_evaluator, stream_evaluator

H, D, K = 8, 4, 3  # state, data and score widths


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(H, H))
    a *= 0.99 / np.abs(np.linalg.eigvals(a)).max()
    return a, rng.normal(size=(D, H)) * 0.5, rng.normal(size=(H, K))


def _task(m: onnx.ModelProto, n: int = 400):
    """The run's task of `m` over a stream of `n` steps (teacher: `m` itself, state carried in each block)."""
    sess = session(m.SerializeToString())
    xs = np.random.default_rng(5).normal(size=(n, D)).astype(np.float32)

    def teacher(rows: np.ndarray) -> np.ndarray:
        return np.concatenate(sess.run(None, {"packed": rows.astype(np.float32)}), 1)

    def stream(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.zeros(H, np.float32)
        rows, outs = [], []
        for i in idx:
            row = np.r_[xs[i], h].astype(np.float32)
            out = teacher(row[None])[0]
            rows.append(row)
            outs.append(out)
            h = out[K:].astype(np.float32)
        return np.stack(rows), np.stack(outs)

    return stream_task("rnn", n, stream, teacher, seed=0, augment_below=0)[0]


def _feeds(x: np.ndarray, m: onnx.ModelProto) -> tuple[list[dict], list[list[np.ndarray]]]:
    feeds = [{"packed": x[i:i + 16]} for i in range(0, len(x), 16)]
    sess = session(m.SerializeToString())
    return feeds, [sess.run(None, f) for f in feeds]


def test_the_plan_judge_runs_the_streams_where_one_step_looks_faithful() -> None:
    a, bx, w = _weights()
    fp = packed_rnn(a, bx, w)
    task = _task(fp)
    drift = packed_rnn(a * 1.01, bx, w)  # a little more memory: close one step from the teacher's state
    data = StreamData(task.x_val, task.y_val, {"h_new": D})
    feeds, ref = _feeds(task.x_val, fp)  # the same validation rows, one step each from the teacher's state
    one_step = int8_plan.evaluator(feeds, ref)(drift, len(feeds))
    worst: dict = {}
    streamed = stream_evaluator(fp, data, worst=worst)(drift, 1)
    assert one_step > 0.999 and streamed < 0.99, (one_step, streamed)  # a 0.99 target: met one step, not here
    assert worst["output"] in (0, 1) and worst["cosine"] == pytest.approx(streamed)
    assert stream_evaluator(fp, data)(fp, 1) == pytest.approx(1.0, abs=1e-9)  # the reference itself
    # rows that are not streams (reversed: no row continues the one before): the plan keeps its one-step judge
    notes: list[str] = []
    rev = StreamData(task.x_val[::-1].copy(), task.y_val[::-1].copy(), {"h_new": D})
    assert plan_evaluator(fp, rev, 1, {}, notes) is None and "one step" in notes[0]
    assert plan_evaluator(fp, None, 1, {}, notes) is None


def test_the_fidelity_fallback_floats_what_the_streams_need() -> None:
    """Fully INT8, the model meets a 0.98 target one step (calibration feeds) but not over the streams: the one-step
    plan floats nothing and its model misses the target over the streams; the stream plan's every figure is the
    stream judge's, and it floats the layer the streams need."""
    a, bx, w = _weights()
    fp = packed_rnn(a, bx, w)
    task = _task(fp)
    feeds, ref = _feeds(task.calibration(64, 0), fp)  # calibration: training rows (random, not streams)
    data = StreamData(task.x_val, task.y_val, {"h_new": D})
    opts = int8_plan.Int8Options(formats=("u8s8-pc",), cle=False, adaround=False, bias_correction=False,
                                 calib="minmax", speed_choice=False, target_cosine=0.98, gptq=False)
    one = int8_plan.build_plan(fp, feeds, ref, opts, clock=None)  # type: ignore[arg-type]  # no timing asked
    st = int8_plan.build_plan(fp, feeds, ref, opts, clock=None, streams=data)  # type: ignore[arg-type]
    judge = stream_evaluator(fp, data)
    assert any("validation streams" in n for n in st.notes) and not any("validation streams" in n for n in one.notes)
    assert one.full is not None and st.full is not None
    # the fully quantized figure each plan started from: one step on the calibration feeds vs over the streams
    assert one.steps["full_cosine"] == pytest.approx(int8_plan.evaluator(feeds, ref)(one.full, len(feeds)))
    assert st.steps["full_cosine"] == pytest.approx(judge(st.full, 1))
    assert one.steps["full_cosine"] >= 0.98 > st.steps["full_cosine"], (one.steps, st.steps)
    assert one.exact_units == [] and judge(one.model, 1) < 0.98  # the one-step plan believed it met the target
    assert len(st.exact_units) >= 1 and st.cosine >= 0.98 and judge(st.model, 1) == pytest.approx(st.cosine)
