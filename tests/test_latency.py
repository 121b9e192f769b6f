"""The interleaved ONNX Runtime timer: round-robin order, stopping rules, per-model feeds."""

from __future__ import annotations

import numpy as np

from edgeslim.measure.latency import interleaved_latency, interleaved_p50_ms


class FakeSession:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def run(self, outputs, feed):
        self.log.append((self.name, tuple(feed)))


def test_rounds_rotate_the_first_model_and_count_runs():
    log: list = []
    sess = {n: FakeSession(n, log) for n in "abc"}
    feed = {"x": np.zeros((4, 3), np.float32)}
    lat = interleaved_latency(sess, dict.fromkeys(sess, feed), rounds=3, per_round=2, warmup=1)
    timed = [n for n, _ in log[3:]]  # after one warm-up run each
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert {k: v.runs for k, v in lat.items()} == {"a": 6, "b": 6, "c": 6}
    assert all(v.batch == 4 and v.p50_ms >= 0 for v in lat.values())


def test_time_bounded_mode_and_own_feeds():
    log: list = []
    sess = {n: FakeSession(n, log) for n in "ab"}
    lat = interleaved_latency(sess, {"a": {"x": np.zeros(1)}, "b": {"input.1": np.zeros(1)}}, seconds=0.01,
                              min_rounds=7, warmup=0)
    assert lat["a"].runs == lat["b"].runs >= 7
    assert {f for n, f in log if n == "a"} == {("x",)} and {f for n, f in log if n == "b"} == {("input.1",)}


def test_p50_of_real_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    for name, inp in (("m1", "x"), ("m2", "data")):  # differently named inputs, one sample
        g = helper.make_graph([helper.make_node("Relu", [inp], ["y"])], name,
                              [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"{name}.onnx")
    p50 = interleaved_p50_ms({k: tmp_path / f"{k}.onnx" for k in ("m1", "m2")}, np.ones((1, 8)), rounds=2,
                             per_round=3, warmup=1)
    assert set(p50) == {"m1", "m2"} and all(0 < v < 1000 for v in p50.values())
