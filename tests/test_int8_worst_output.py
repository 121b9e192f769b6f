"""Several outputs without labels: INT8 is judged on the worst output, each output on its own.

The model: x [N, 32] -> big = x W2 [N, 128] (one channel ~1000x the others) -> small = big W3 [N, 2] (reads
only the small channels). INT8 of `big` spends its 256 levels on the outlier channel: `big` stays faithful
(cosine ~1), `small` is destroyed. The old score (one row per sample, both outputs concatenated) is dominated
by `big` and accepted it; the worst-output score (`onnxkit.session.output_scores`) does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from reliability_helpers import main_inproc

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.lazy import sample_axis, stream_output_cosines
from edgeslim.onnxkit.session import mean_row_cosine, onnx_accuracy, output_scores, sample_rows, session
from edgeslim.quant.int8_plan import evaluator

INT8 = "version: 1\npasses:\n  - quantize_int8: {}\n"


def _two(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((32, 128)) * 0.05).astype(np.float32)
    w2[:, 0] = 40.0 * np.abs(rng.standard_normal(32)).astype(np.float32)  # the outlier channel
    w3 = (rng.standard_normal((128, 2)) * 0.5).astype(np.float32)
    w3[0] = 0.0
    vi = helper.make_tensor_value_info
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w2"], ["big"]), helper.make_node("MatMul", ["big", "w3"], ["small"])],
        "two", [vi("x", TensorProto.FLOAT, ["N", 32])],
        [vi("big", TensorProto.FLOAT, ["N", 128]), vi("small", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _x(n: int = 96) -> np.ndarray:
    return np.abs(np.random.default_rng(1).standard_normal((n, 32))).astype(np.float32)


def test_worst_output_score_sees_what_the_concatenated_row_hides(tmp_path):
    src, q = _two(tmp_path / "two.onnx"), tmp_path / "q.onnx"
    x = _x()
    feeds = oq.array_feeds("x", x, 16)
    oq.quantize_static(src, q, feeds, oq.parse_format("u8s8-pc"), oq.StaticQuant(method="minmax"))
    y = sample_rows(session(src), x).astype(np.float32)  # the targets a task without labels holds
    old = mean_row_cosine(sample_rows(session(q), x), y)  # the score before: one concatenated row per sample
    by: dict[str, float] = {}
    new = onnx_accuracy(q, x, y, by_output=by)
    assert old > 0.999, old  # the big output hides the small one
    assert by["big"] > 0.999 and by["small"] < 0.5 and new == by["small"], by
    assert abs(onnx_accuracy(src, x, y) - 1.0) < 1e-6
    # the INT8 plan's own check judges the same way (per output, mean per-sample cosine)
    ref = [session(src).run(None, f) for f in feeds]
    worst: dict = {}
    got = evaluator(feeds, ref, worst=worst)(onnx.load(str(q)), len(feeds))
    assert got < 0.5 and worst["output"] == 1 and abs(worst["cosine"] - got) < 1e-12


def test_run_inputs_int8_pick_respects_min_cosine_on_the_worst_output(tmp_path):
    model = _two(tmp_path / "two.onnx")
    np.savez(tmp_path / "x.npz", x=_x())
    (tmp_path / "q.yaml").write_text(INT8)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "q.yaml"), "--model", str(model), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(out))
    assert code == 0, err
    q = json.loads((out / "results.json").read_text())["stages"][-1]
    notes = q["notes"]
    rows = {r["candidate"]: r for r in notes["tried"]}
    full = rows["int8-full"]  # every layer INT8: big faithful, small damaged -> refused
    assert full["val_by_output"]["big"] > 0.98 and full["val_by_output"]["small"] < 0.9, full
    assert full["worst_output"] == "small" and full["val_accuracy"] == full["val_by_output"]["small"]
    assert not full["why"].startswith("won")
    w = notes["worst_output"]  # the pick, judged on its worst output
    assert w["output"] in ("big", "small") and w["val_cosine"] >= 0.99, w
    assert min(w["by_output"].values()) == w["val_cosine"]
    per = q["fidelity_val"]["per_output"]
    assert per["small"]["cosine"] >= 0.99 and per["big"]["cosine"] >= 0.99, per
    assert any("worst output 'small'" in n for n in notes["plan_notes"]), notes["plan_notes"]


def test_output_scores_split_the_row_and_compare_integer_outputs_exactly(tmp_path):
    """An int64 output (ArgMax) is judged by exact agreement; a state [2, N, H] on its batch axis."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("ArgMax", ["x"], ["cls"], axis=1, keepdims=0),
             helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Concat", ["u", "u"], ["state"], axis=0)]
    g = helper.make_graph(nodes, "c", [vi("x", TensorProto.FLOAT, ["N", 4])],
                          [vi("cls", TensorProto.INT64, ["N"]), vi("state", TensorProto.FLOAT, [2, "N", 4])],
                          [numpy_helper.from_array(np.array([0], np.int64), "ax")])
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)
    y = sample_rows(session(path), x)
    assert y.shape == (10, 1 + 8)
    y[:3, 0] += 1  # 3 of 10 class ids differ
    y[:, 1:] *= 2.0  # a scaled state: cosine 1
    s = output_scores(path, x, y)
    assert abs(s["cls"] - 0.7) < 1e-12 and abs(s["state"] - 1.0) < 1e-9, s
    # one value per sample: its per-sample cosine is only the sign; the cosine over all values counts
    z = np.stack([np.ones(10), np.zeros(10)], 1)
    assert abs(mean_row_cosine(z[:, :1], z[:, :1] * np.arange(1, 11)[:, None]) - 1.0) < 1e-12
    w = np.linspace(1, 2, 10)[:, None]
    got = [np.ones((10, 1)), np.zeros((10, 1))]
    assert stream_output_cosines([([w, np.ones((10, 1))], [w[::-1].copy(), *got[:1]], 10)])[0] < 0.99
    # the streamed form (the INT8 plan): samples found on each output's axis
    assert sample_axis((2, 5, 4), 5) == 1 and sample_axis((5, 4), 5) == 0 and sample_axis((2, 4), 1) is None
    r = session(path).run(None, {"x": x[:5]})
    g2 = [r[0].copy(), -r[1]]
    g2[0][0] += 1
    cos = stream_output_cosines([(r, g2, 5)])
    assert abs(cos[0] - 0.8) < 1e-12 and abs(cos[1] + 1.0) < 1e-9, cos
