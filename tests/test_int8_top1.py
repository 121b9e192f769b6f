"""The INT8 plan's fidelity figure (`quant.int8_plan.evaluator`) is classifier-aware like the validation pick:
for a score output it is the lower of the cosine and the top-1 agreement, so a plan cannot meet its target with
a cosine of 0.9999 while every argmax flips; other outputs are judged by the cosine alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeslim.onnxkit.scoring import Agreement
from edgeslim.quant.int8_plan import evaluator


def _identity(shape: list[int]) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_score_output_bound_by_top1():
    rng = np.random.default_rng(0)
    feeds, ref = [], []
    for _ in range(6):
        x = rng.random((1, 10)).astype(np.float32) * 0.1
        x[0, 0], x[0, 1] = 1.0, 0.99
        feeds.append({"x": x})
        r = x.copy()
        r[0, 0], r[0, 1] = 0.99, 1.0  # the two top scores swapped: cosine ~0.9999, argmax always differs
        ref.append([r])
    worst: dict = {}
    score = evaluator(feeds, ref, worst=worst)(_identity([1, 10]), 6)
    assert score == 0.0
    ones = evaluator(feeds, [[f["x"]] for f in feeds])(_identity([1, 10]), 6)
    assert ones > 0.9999


def test_map_output_is_cosine_only():
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 4, 6)).astype(np.float32)} for _ in range(4)]
    ref = [[f["x"] + 0.01 * rng.normal(size=f["x"].shape).astype(np.float32)] for f in feeds]
    score = evaluator(feeds, ref)(_identity([1, 4, 6]), 4)
    assert 0.99 < score < 1.0  # a box-row map, not class scores: the argmax of its rows does not count


def test_agreement_counts_positions():
    a = Agreement()
    r = np.zeros((1, 3, 1000), np.float32)  # a CTC recogniser's [N, T, classes]
    r[0, :, 5] = 1
    g = r.copy()
    g[0, 2, 7] = 2  # one position of three disagrees
    a.add([r], [g])
    assert a.value(0) == 2 / 3 and a.bound(0, 0.99) == 2 / 3
    assert a.value(1) is None and a.bound(1, 0.5) == 0.5
