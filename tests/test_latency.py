"""The one timer: round-robin order, stopping rules, per-model feeds, callables beside sessions."""

from __future__ import annotations

import numpy as np

from edgeslim.measure.latency import interleaved_latency, onnx_interleaved


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
    lat = onnx_interleaved({k: tmp_path / f"{k}.onnx" for k in ("m1", "m2")}, {"x": np.ones((1, 8), np.float32)},
                           rounds=2, per_round=3, warmup=1)
    assert set(lat) == {"m1", "m2"} and all(0 < v.p50_ms < 1000 and v.runs == 6 for v in lat.values())


def test_callables_are_timed_in_the_same_rounds():
    log: list = []
    sess = FakeSession("ort", log)
    lat = interleaved_latency({"ort": sess, "torch": lambda: log.append(("torch", ()))},
                              {"ort": {"x": np.zeros((2, 3))}}, rounds=4, warmup=0, batch=2)
    assert [n for n, _ in log] == ["ort", "torch", "torch", "ort", "ort", "torch", "torch", "ort"]
    assert lat["ort"].runs == lat["torch"].runs == 4 and lat["torch"].batch == 2


def test_max_seconds_caps_the_rounds():
    import time

    lat = interleaved_latency({"slow": lambda: time.sleep(0.002)}, rounds=10_000, max_seconds=0.05, min_rounds=5,
                              warmup=0)
    assert 5 <= lat["slow"].runs < 10_000
