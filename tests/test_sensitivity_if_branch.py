"""Structured sensitivity on a converted graph with an `If` whose branch the data never takes (silero VAD's 8 kHz
branch, `silero_vad.onnx`): the untaken branch's layers are not in the dependency graph traced on the sample,
so they are skipped (`notes.not_traced`) instead of failing with "is not in the dependency graph"."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from reliability_helpers import main_inproc

SENS = """version: 1
finetune: {epochs: 0, lr: 0.001, batch_size: 16}
passes:
  - sensitivity_prune: {target: 0.4, mode: structured, max_ratio: 0.6, ratios: [0.3, 0.6]}
"""


def _rate_model(path):
    """x [N, 4, 16], sr (int64 scalar) -> score [N, 1]: conv -> If(sr == 16000) {conv, relu, conv} else {the same
    with other weights} -> mean over time -> Gemm -> sigmoid."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    def branch(tag):
        nodes = [helper.make_node("Conv", ["r0", f"{tag}_w1", f"{tag}_b1"], [f"{tag}_c1"], pads=[1, 1]),
                 helper.make_node("Relu", [f"{tag}_c1"], [f"{tag}_r1"]),
                 helper.make_node("Conv", [f"{tag}_r1", f"{tag}_w2", f"{tag}_b2"], [f"{tag}_y"], pads=[1, 1])]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, None)],
                                 [w(f"{tag}_w1", 16, 16, 3), w(f"{tag}_b1", 16), w(f"{tag}_w2", 16, 16, 3),
                                  w(f"{tag}_b2", 16)])

    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Equal", ["sr", "k16"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("k16b"), else_branch=branch("k8b"), name="rate"),
             helper.make_node("Relu", ["y"], ["ry"]), helper.make_node("ReduceMean", ["ry"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Gemm", ["m", "wf", "bf"], ["z"], transB=1), helper.make_node("Sigmoid", ["z"], ["score"])]
    inits = [w("w0", 16, 4, 3), w("b0", 16), w("wf", 1, 16), w("bf", 1),
             numpy_helper.from_array(np.array(16000, np.int64), "k16")]
    g = helper.make_graph(nodes, "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16]),
                                          helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_structured_sensitivity_skips_the_branch_the_data_never_takes(tmp_path):
    model = _rate_model(tmp_path / "rate.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).standard_normal((60, 1, 4, 16)).astype(np.float32),
             sr=np.array(16000, np.int64))
    (tmp_path / "s.yaml").write_text(SENS)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "s.yaml"), "--model", str(model), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(out))
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    base, s = res["stages"]
    notes = s["notes"]
    assert notes["not_traced"] and all(".else_branch." in n for n in notes["not_traced"]), notes["not_traced"]
    assert notes["allocation"] and not any(".else_branch." in k for k in notes["allocation"])
    assert any(".then_branch." in k and v > 0 for k, v in notes["allocation"].items())
    assert notes["macs_after"] < 0.6 * notes["macs_before"] and notes["params_after"] < notes["params_before"]
    f = s["fidelity"]
    assert f["split"] == "test" and f["samples"] >= 5 and 0 < f["cosine"] <= 1
