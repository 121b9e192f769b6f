"""INT8 of models that run one sample at a time: a batch fixed at 1, or no batch axis, with one input or several
(packed rows, recurrent state). Calibration feeds and the per-layer report feed exactly the model's fixed batch
(`onnxkit.quant.calibration_feeds`, `quant.qdq._run_tensors`); a one-input model without a batch axis goes
through the packed layout; a state output that the graph also reads keeps its Q/DQ (`quant.qdq_float`)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from reliability_helpers import main_inproc

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import name_nodes
from edgeslim.quant.qdq import _run_tensors
from edgeslim.quant.qdq_float import keep_float, quantized_nodes

INT8 = "version: 1\nfinetune: {epochs: 0, lr: 0.001, batch_size: 16}\npasses:\n  - quantize_int8: {}\n"


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _conv(path: Path, batch_axis: bool) -> Path:
    """conv -> relu -> conv -> relu -> pool -> gemm; input [1, 3, 8, 8] (batch fixed at 1) or [3, 8, 8] (none)."""
    rng = np.random.default_rng(0)
    inits = [_w(rng, "w1", 8, 3, 3, 3), _w(rng, "b1", 8), _w(rng, "w2", 8, 8, 3, 3), _w(rng, "b2", 8),
             _w(rng, "fw", 4, 8), _w(rng, "fb", 4)]
    nodes, x = [], "input"
    if not batch_axis:
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "ax"))
        nodes.append(helper.make_node("Unsqueeze", ["input", "ax"], ["xb"]))
        x = "xb"
    nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    shape = [1, 3, 8, 8] if batch_axis else [3, 8, 8]
    g = helper.make_graph(nodes, "n", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _state(path: Path, batch: int | str) -> Path:
    """input [B, 32] and state h [B, 8] -> prob [B, 1], hn [B, 8]: conv features + h -> tanh -> hn, which the
    score head also reads (hn = tanh(W1 f(x) + W2 h), prob = sigmoid(w3 hn))."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Unsqueeze", ["input", "ax1"], ["x3"]),
             helper.make_node("Conv", ["x3", "cw", "cb"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "cw2", "cb2"], ["c2"], pads=[1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("ReduceMean", ["r2", "ax2"], ["m"], keepdims=0),
             helper.make_node("Gemm", ["m", "w1", "b1"], ["a"], transB=1),
             helper.make_node("Gemm", ["h", "w2"], ["bb"], transB=1),
             helper.make_node("Add", ["a", "bb"], ["s"]), helper.make_node("Tanh", ["s"], ["hn"]),
             helper.make_node("Gemm", ["hn", "w3", "b3"], ["z"], transB=1), helper.make_node("Sigmoid", ["z"], ["prob"])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             _w(rng, "cw", 8, 1, 3), _w(rng, "cb", 8), _w(rng, "cw2", 8, 8, 3), _w(rng, "cb2", 8), _w(rng, "w1", 8, 8),
             _w(rng, "b1", 8), _w(rng, "w2", 8, 8), _w(rng, "w3", 1, 8), _w(rng, "b3", 1)]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "s", [vi("input", TensorProto.FLOAT, [batch, 32]), vi("h", TensorProto.FLOAT, [batch, 8])],
                          [vi("prob", TensorProto.FLOAT, [batch, 1]), vi("hn", TensorProto.FLOAT, [batch, 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _run(tmp_path: Path, model: Path, inputs: Path) -> dict:
    (tmp_path / "q.yaml").write_text(INT8)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "q.yaml"), "--model", str(model), "--inputs", str(inputs),
                               "-o", str(out))
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("batch_axis", [True, False], ids=["batch-fixed-at-1", "no-batch-axis"])
def test_one_input_one_sample_at_a_time_through_int8(tmp_path, batch_axis):
    model = _conv(tmp_path / "m.onnx", batch_axis)
    np.savez(tmp_path / "x.npz", input=np.random.default_rng(2).standard_normal((48, 3, 8, 8)).astype(np.float32))
    res = _run(tmp_path, model, tmp_path / "x.npz")
    base, q = res["stages"]
    assert q["name"] == "quantize_int8" and q["size_bytes"] < 0.8 * base["size_bytes"]
    f = q["fidelity"]
    assert f["split"] == "test" and f["samples"] >= 5 and f["cosine"] > 0.99, f
    assert q["fidelity_val"]["split"] == "val" and q["latency_ms_p50"] > 0
    layers = [r for r in q["notes"]["layers"] if r["bits"] == 8]  # the per-layer report ran one sample a run
    assert all(r["sqnr_db"] is not None and r["sqnr_db"] > 15 for r in layers), layers


def test_packed_state_model_with_batch_fixed_at_1_through_int8(tmp_path):
    model = _state(tmp_path / "s.onnx", 1)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", input=rng.standard_normal((100, 1, 32)).astype(np.float32),
             h=np.zeros((1, 8), np.float32))
    res = _run(tmp_path, model, tmp_path / "s.npz")
    assert res["streams"]["state"] == {"h": "hn"}
    base, q = res["stages"]
    assert q["name"] == "quantize_int8" and q["notes"]["calibration"]["samples"] >= 50  # one row per feed
    f = q["fidelity"]
    assert f["mode"] == "stream" and f["cosine"] > 0.98 and 0 <= f["decisions_changed"] <= 0.05, f
    assert q["fidelity_one_step"]["split"] == "test"


def test_calibration_feeds_and_layer_tensors_respect_a_fixed_batch(tmp_path):
    fixed, free = _state(tmp_path / "f.onnx", 1), _state(tmp_path / "d.onnx", "b")
    assert oq.input_batch(fixed) == 1 and oq.input_batch(free) is None
    x = np.arange(10 * 32, dtype=np.float32).reshape(10, 32)
    assert [len(f["input"]) for f in oq.array_feeds("input", x, 4, fixed=True)] == [4, 4, 4]
    last = oq.array_feeds("input", x, 4, fixed=True)[-1]["input"]
    assert np.array_equal(last, np.concatenate([x[8:], x[:2]]))  # filled with the first samples again
    assert [len(f["input"]) for f in oq.array_feeds("input", x, 4)] == [4, 4, 2]
    assert np.array_equal(oq.array_feeds("input", x[:3], 4, fixed=True)[0]["input"], x[[0, 1, 2, 0]])
    # a model with two inputs: _run_tensors feeds the first one only, so check on a one-input model
    conv = _conv(tmp_path / "c.onnx", True)
    xs = np.random.default_rng(4).standard_normal((5, 3, 8, 8)).astype(np.float32)
    got = _run_tensors(conv, xs, ["logits", "p"])
    import onnxruntime as ort

    s = ort.InferenceSession(str(conv), providers=["CPUExecutionProvider"])
    want = np.concatenate([s.run(["logits"], {"input": xs[i:i + 1]})[0].ravel() for i in range(5)])
    assert got["logits"].shape == (20,) and np.allclose(got["logits"], want, atol=1e-6)
    assert got["p"].shape == (5 * 8,)


def test_keep_float_of_an_output_the_graph_reads_defines_it_once(tmp_path):
    src = _state(tmp_path / "d.onnx", "b")
    pre, q = tmp_path / "pre.onnx", tmp_path / "q.onnx"
    oq.preprocess(src, pre)
    named = onnx.load(str(pre))
    name_nodes(named)  # as the INT8 plan does: keep_float picks nodes by name
    onnx.save(named, str(pre))
    x = np.random.default_rng(5).standard_normal((32, 32)).astype(np.float32)
    feeds = [{"input": x[i:i + 8], "h": np.tanh(x[i:i + 8, :8])} for i in range(0, 32, 8)]
    oq.quantize_static(pre, q, feeds, oq.parse_format("u8s8-rr-pc"), oq.StaticQuant(keep_activations=True))
    qm = onnx.load(str(q))
    every = {n.name for n in quantized_nodes(qm)}
    assert len(every) >= 5 and "" not in every
    import onnxruntime as ort

    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds[0])
    for names in (every, {n for n in every if "Tanh" in n or "Gemm" in n}, set()):
        m = keep_float(qm, names)
        defined = collections.Counter(o for n in m.graph.node for o in n.output)
        assert max(defined.values()) == 1, [k for k, v in defined.items() if v > 1]
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds[0])
        assert all(np.abs(a - b).max() < 0.05 for a, b in zip(ref, got)), names


def test_sample_rows_reads_each_outputs_batch_axis(tmp_path):
    """A packed model's state output [2, N, H] has its samples on axis 1: the unlabelled accuracy (per-sample
    cosine to the teacher's rows) must read it there, in chunks of any size (here 64 + 6 rows)."""
    from edgeslim.onnxkit.session import onnx_accuracy, sample_rows, session

    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Mul", ["u", "two"], ["u2"]),
             helper.make_node("Concat", ["u", "u2"], ["state"], axis=0), helper.make_node("Neg", ["x"], ["score"])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "ax"), numpy_helper.from_array(np.float32(2), "two")]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "st", [vi("x", TensorProto.FLOAT, ["N", 3])],
                          [vi("score", TensorProto.FLOAT, ["N", 3]), vi("state", TensorProto.FLOAT, [2, "N", 3])], inits)
    path = tmp_path / "st.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(6).standard_normal((70, 3)).astype(np.float32)
    want = np.concatenate([-x, x, 2 * x], 1)  # per sample: score, then the state's two rows
    got = sample_rows(session(path), x, 64)
    assert got.shape == (70, 9) and np.allclose(got, want, atol=1e-6)
    assert abs(onnx_accuracy(path, x, want.astype(np.float32)) - 1.0) < 1e-9
