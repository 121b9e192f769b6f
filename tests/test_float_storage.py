"""Storage of the weights of layers the INT8 plan keeps float for fidelity (issue 23): int8 codes per output
channel (Cast -> Mul, folded by ONNX Runtime at load) when the plan's fidelity holds, else fp16."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import name_nodes
from edgeslim.onnxkit.session import session
from edgeslim.quant import int8_plan
from edgeslim.quant.float_storage import STORAGE_TOL, choose_storage
from edgeslim.quant.qdq_float import keep_float, quantized_nodes

F = TensorProto.FLOAT


def _model(seed: int = 0, outliers: bool = False) -> onnx.ModelProto:
    """x[1,8,8,8] -> Conv 8->32 3x3 + ReLU -> Conv 32->32 3x3 + ReLU -> GAP -> Flatten -> Gemm 32->64 (transB).
    `outliers`: each output channel of the second conv has one weight 300x the others, so int8 rounding
    (one scale per channel) flattens the rest of the channel."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((32, 32, 3, 3)) * np.geomspace(0.005, 0.5, 32)[:, None, None, None]).astype(np.float32)
    if outliers:
        w1[np.arange(32), rng.integers(0, 32, 32), 1, 1] *= 300.0
    inits = [
        numpy_helper.from_array((rng.standard_normal((32, 8, 3, 3)) * 0.2).astype(np.float32), "w0"),
        numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "b0"),
        numpy_helper.from_array(w1, "w1"),  # channel scales spread over 100x: one scale per channel matters
        numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((64, 32)) * 0.3).astype(np.float32), "wf"),
        numpy_helper.from_array(np.zeros(64, np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1] * 4, kernel_shape=[3, 3], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1] * 4, kernel_shape=[3, 3], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 8, 8, 8])],
                          [helper.make_tensor_value_info("y", F, [1, 64])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    name_nodes(m)
    return m


def _feeds(n: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(n)]


def _run(m: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    s = session(m.SerializeToString())
    return np.concatenate([s.run(None, f)[0] for f in feeds])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _decoded_from(m: onnx.ModelProto, node: str, k: int = 1) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """(int8 codes, scale) initializers behind input `k` of `node` when it is Cast -> Mul decoded."""
    inits = {t.name: t for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    mul = prod[next(n for n in m.graph.node if n.name == node).input[k]]
    cast = prod[mul.input[0]]
    assert (mul.op_type, cast.op_type) == ("Mul", "Cast")
    return inits[cast.input[0]], inits[mul.input[1]]


def test_int8_storage_of_fidelity_floats_is_per_output_channel_smaller_and_faithful() -> None:
    m, feeds = _model(), _feeds()
    q = oq.quantize_static_model(m, feeds, oq.parse_format("u8s8-pc"), oq.StaticQuant(keep_activations=True))
    every = {n.name for n in quantized_nodes(q)}
    fp16 = keep_float(q, every, exact=every, float_model=m, int8_min_elements=16)
    int8 = keep_float(q, every, exact=every, float_model=m, int8_min_elements=16, exact_storage="int8")
    s16, s8 = len(fp16.SerializeToString()), len(int8.SerializeToString())
    w = 32 * 8 * 9 + 32 * 32 * 9 + 64 * 32  # weight elements: fp16 2 B each, int8 1 B + a scale per channel
    assert s8 < s16 - 0.8 * w, (s16, s8)
    codes, scale = _decoded_from(int8, "conv1")
    assert codes.data_type == TensorProto.INT8 and list(codes.dims) == [32, 32, 3, 3]
    assert list(scale.dims) == [32, 1, 1, 1]  # Conv: output channels are axis 0
    s = numpy_helper.to_array(scale).ravel()
    assert s.max() / s.min() > 30  # one scale per channel, following the channels' 100x spread
    codes, scale = _decoded_from(int8, "fc")
    assert list(codes.dims) == [64, 32] and list(scale.dims) == [64, 1]  # Gemm transB=1: axis 0
    assert not any(t.data_type == TensorProto.FLOAT16 for t in int8.graph.initializer)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in int8.graph.node)  # all float
    ref = _run(m, feeds)
    assert _cos(_run(int8, feeds), ref) > 0.9999 and _cos(_run(fp16, feeds), ref) > 0.99999


class _Built:
    """Fake plans of known cosine and size for `choose_storage`'s rule."""

    def __init__(self, cos: dict[str, float], small_int8: bool = True) -> None:
        self.cos, self.built, self.evaluated = cos, {}, []
        self.worst: dict = {}
        self.small_int8 = small_int8

    def build(self, s: str) -> onnx.ModelProto:
        w = np.zeros(100 if s == "int8" and self.small_int8 else 200, np.int8)
        m = helper.make_model(helper.make_graph([], s, [], [], [numpy_helper.from_array(w, s)]))
        self.built[s] = m
        return m

    def evaluate(self, m: onnx.ModelProto) -> float:
        s = m.graph.name
        self.evaluated.append(s)
        self.worst.update(output=0 if s == "fp16" else 1, cosine=self.cos[s])
        return self.cos[s]


def test_choose_storage_keeps_int8_only_when_the_plan_keeps_its_fidelity() -> None:
    b = _Built({"fp16": 0.9962, "int8": 0.9958})  # int8 still >= the target: int8
    c = choose_storage(b.build, b.evaluate, 0.995, worst=b.worst)
    assert (c.storage, c.cosine, c.model) == ("int8", 0.9958, b.built["int8"]) and c.sizes["int8"] < c.sizes["fp16"]
    assert "int8" in c.why and b.worst == {"output": 1, "cosine": 0.9958}
    b = _Built({"fp16": 0.9962, "int8": 0.9940})  # int8 below the target and by more than the tolerance: fp16
    c = choose_storage(b.build, b.evaluate, 0.995, worst=b.worst)
    assert (c.storage, c.cosine, c.model) == ("fp16", 0.9962, b.built["fp16"])
    assert c.cosines == {"fp16": 0.9962, "int8": 0.9940} and "below target" in c.why
    assert b.worst == {"output": 0, "cosine": 0.9962}  # the evaluator's record describes the chosen model
    b = _Built({"fp16": 0.9900, "int8": 0.9900 - STORAGE_TOL / 2})  # target unmet either way, tiny drop: int8
    assert choose_storage(b.build, b.evaluate, 0.995).storage == "int8"
    b = _Built({"fp16": 0.9900, "int8": 0.9900 - 3 * STORAGE_TOL})
    assert choose_storage(b.build, b.evaluate, 0.995).storage == "fp16"
    b = _Built({"fp16": 0.9962, "int8": 0.9962}, small_int8=False)  # nothing to save: int8 never evaluated
    c = choose_storage(b.build, b.evaluate, 0.995)
    assert c.storage == "fp16" and b.evaluated == ["fp16"] and "saves nothing" in c.why


def _plan(target: float, outliers: bool) -> int8_plan.Int8Plan:
    m, feeds = _model(outliers=outliers), _feeds()
    ref = [session(m.SerializeToString()).run(None, f) for f in feeds]
    opts = int8_plan.Int8Options(formats=("u8s8-pc",), cle=False, adaround=False, bias_correction=False,
                                 calib="minmax", speed_choice=False, target_cosine=target)
    return int8_plan.build_plan(m, feeds, ref, opts, clock=None)  # type: ignore[arg-type]  # no timing asked


def test_plan_stores_fidelity_floats_int8_when_the_target_holds_and_fp16_when_not() -> None:
    # clean weights: int8 rounding costs ~1e-5 cosine (within the tolerance); one 300x outlier weight per channel:
    # it costs ~3e-4, under the target -> fp16
    for outliers, target, want in ((False, 0.99999, "int8"), (True, 0.9999, "fp16")):
        plan = _plan(target, outliers)
        assert plan.exact_units, "the target must keep layers float for fidelity"
        st = plan.steps["exact_storage"]
        assert plan.exact_storage == st["chosen"] == want, (target, st)
        assert set(st["cosine"]) == {"fp16", "int8"} and plan.cosine == st["cosine"][want]
        assert st["bytes"]["int8"] < st["bytes"]["fp16"] * 0.75
        assert len(plan.model.SerializeToString()) == st["bytes"][want]
        note = next(n for n in plan.notes if "kept float for fidelity stored" in n)
        assert note.split("stored ")[1].startswith(want)
        # the ablation variants use the same storage
        v = plan.variant(speed=False)
        has8 = any(t.name.endswith("_q8") for t in v.graph.initializer)
        assert has8 == (want == "int8")
