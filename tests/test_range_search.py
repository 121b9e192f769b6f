"""End-to-end range choice for the most sensitive layers (`quant.range_search`, issue 23): a tensor whose rare
large values carry the output loses them to a clipped range; the search gives that layer a calibration method's
range that keeps them and the fully quantized model's score goes up, judged on the outputs, not on a local
error; nothing that does not raise the score is kept."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.measure.decide import ratio
from edgeslim.onnxkit.graph import name_nodes
from edgeslim.onnxkit.session import session
from edgeslim.quant import calib_select, int8_plan
from edgeslim.quant.range_search import Limits, search_ranges

F = TensorProto.FLOAT


def _model(seed: int = 0) -> onnx.ModelProto:
    """x[N,16] -> MatMul 16x32 -> Relu -> MatMul 32x1 -> y; hidden unit 0 carries input feature 0 (rare spikes)
    and dominates the output."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 32)) * 0.2).astype(np.float32)
    w1[0, :] = 0.0
    w1[0, 0] = 1.0
    w2 = (rng.standard_normal((32, 1)) * 0.2).astype(np.float32)
    w2[0, :] = 1.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "spiky", [helper.make_tensor_value_info("x", F, [None, 16])],
                          [helper.make_tensor_value_info("y", F, [None, 1])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    name_nodes(m)
    return m


def _feeds(seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(8):
        x = (rng.standard_normal((32, 16)) * 0.5).astype(np.float32)
        x[:, 0] = np.abs(x[:, 0])
        x[k, 0] = 40.0  # rare (one row in 32), large, and what the output mostly shows
        out.append({"x": x})
    return out


def _setup() -> tuple[onnx.ModelProto, list, Callable, dict, Callable[[dict], onnx.ModelProto]]:
    """The model, its feeds, the plan's judge on them, every calibration method's ranges and the plan's
    quantizer at given ranges."""
    m, feeds = _model(), _feeds()
    ref = [session(m.SerializeToString()).run(None, f) for f in feeds]
    opts = int8_plan.Int8Options(formats=("u8s8-pc",))
    every = calib_select.choose_calibration(calib_select.collect(m, feeds), None)[2]

    def quantize(r: dict) -> onnx.ModelProto:
        return int8_plan.quantize(m, feeds, "u8s8-pc", r, opts)
    return m, feeds, int8_plan.evaluator(feeds, ref), every, quantize


def test_search_keeps_the_range_that_the_outputs_need() -> None:
    m, feeds, ev, every, quantize = _setup()
    clipped = {**every["minmax"], "h": (every["minmax"]["h"][0], 2.0), "r": (0.0, 2.0)}  # clips the spikes
    before = ev(quantize(clipped), len(feeds))
    res = search_ranges(m, feeds, clipped, before, quantize, ev, Limits(probe_feeds=2, max_units=4))
    assert before < 0.9  # the spikes of h are lost
    assert res.score > 0.999 and set(res.changed.values()) <= {"minmax", "entropy", "mse", "percentile"}
    assert res.changed
    assert res.ranges["r"][1] > 30 and res.ranges["x"] == clipped["x"]  # the clipped tensor the output reads
    assert abs(ev(quantize(res.ranges), len(feeds)) - res.score) < 1e-9  # the ranges kept give the score said
    assert res.trials <= 4 * 3
    assert "range search" in res.note()


def test_search_keeps_ranges_when_nothing_scores_higher() -> None:
    m, feeds, ev, every, quantize = _setup()
    res = search_ranges(m, feeds, every["minmax"], 1.0, quantize, ev, Limits(probe_feeds=2))  # nothing beats 1.0
    assert res.changed == {} and res.ranges == every["minmax"] and res.score == 1.0


class _Clock:
    """Injected timings: every model takes the same time (the plan's speed steps see no difference)."""

    def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
        return {k: [1.0] * 20 for k in models}

    def ratio(self, cand, ref):  # noqa: ANN001, ANN201 - the Clock protocol
        return ratio(cand, ref)

    def profile(self, models: dict[str, bytes], runs: int = 15) -> dict[str, dict[str, float]]:
        return {k: {} for k in models}


def test_plan_runs_the_search_only_when_asked_and_below_target() -> None:
    m, feeds = _model(), _feeds()
    ref = [session(m.SerializeToString()).run(None, f) for f in feeds]
    base = dict(formats=("u8s8-pc",), cle=False, adaround=False, bias_correction=False, speed_choice=False,
                fidelity_fallback=False, gptq=False, calib="percentile")
    off = int8_plan.build_plan(m, feeds, ref, int8_plan.Int8Options(**base, target_cosine=1.0), _Clock())
    assert "range_search" not in off.steps  # off by default
    on = int8_plan.build_plan(m, feeds, ref, int8_plan.Int8Options(**base, target_cosine=1.0, range_search=True),
                              _Clock())
    rs = on.steps["range_search"]
    assert rs["before"] == off.steps["full_cosine"] and rs["after"] >= rs["before"]
    assert on.steps["full_cosine"] == rs["after"] and any("range search" in n for n in on.notes)
    met = int8_plan.build_plan(m, feeds, ref, int8_plan.Int8Options(**base, target_cosine=0.5, range_search=True),
                               _Clock())
    assert "range_search" not in met.steps  # the fully quantized model already meets the target
