"""Storage of the weights of layers the INT8 plan keeps float for fidelity (issue 23): int8 codes per output
channel (Cast -> Mul, folded by ONNX Runtime at load) when the plan's fidelity holds, else fp16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import conv_gap_fc, cosine, run_feeds
from onnx import TensorProto, numpy_helper

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.session import session
from edgeslim.quant import int8_plan
from edgeslim.quant.float_storage import STORAGE_TOL, plan_storage
from edgeslim.quant.qdq_float import keep_float, quantized_nodes
from edgeslim.quant.qdq_shrink import shrink

F = TensorProto.FLOAT


def _model(seed: int = 0, outliers: bool = False) -> onnx.ModelProto:
    """x[1,8,8,8] -> Conv 8->32 3x3 + ReLU -> Conv 32->32 3x3 + ReLU -> GAP -> Flatten -> Gemm 32->64 (transB).
    `outliers`: each output channel of the second conv has one weight 300x the others, so int8 rounding
    (one scale per channel) flattens the rest of the channel."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((32, 32, 3, 3)) * np.geomspace(0.005, 0.5, 32)[:, None, None, None]).astype(np.float32)
    if outliers:
        w1[np.arange(32), rng.integers(0, 32, 32), 1, 1] *= 300.0
    return conv_gap_fc({  # channel scales of w1 spread over 100x: one scale per channel matters
        "w0": rng.standard_normal((32, 8, 3, 3)) * 0.2, "b0": rng.standard_normal(32) * 0.1, "w1": w1,
        "b1": rng.standard_normal(32) * 0.1, "wf": rng.standard_normal((64, 32)) * 0.3, "bf": np.zeros(64)})


def _feeds(n: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(n)]


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
    int8 = keep_float(q, every, exact=every, float_model=m, int8_min_elements=16, exact_int8=every)
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
    ref = run_feeds(m, feeds)
    assert cosine(run_feeds(int8, feeds), ref) > 0.9999 and cosine(run_feeds(fp16, feeds), ref) > 0.99999


def _plan(target: float, outliers: bool, gptq: bool = False) -> int8_plan.Int8Plan:
    m, feeds = _model(outliers=outliers), _feeds()
    ref = [session(m.SerializeToString()).run(None, f) for f in feeds]
    opts = int8_plan.Int8Options(formats=("u8s8-pc",), cle=False, adaround=False, bias_correction=False,
                                 calib="minmax", speed_choice=False, target_cosine=target, gptq=gptq)
    return int8_plan.build_plan(m, feeds, ref, opts, clock=None)  # type: ignore[arg-type]  # no timing asked


def test_plan_stores_fidelity_floats_int8_where_the_target_holds_and_fp16_elsewhere() -> None:
    # round-to-nearest codes (gptq=False), the rule's three outcomes; clean weights: int8 rounding costs ~1e-5 cosine (within the tolerance) -> all int8; one 300x outlier weight
    # per output channel of conv1: int8 rounding of conv1 costs ~3e-4 -> conv1 fp16, fc (harmless) int8; conv1
    # the only fidelity float -> fp16
    for outliers, target, want in ((False, 0.99999, "int8"), (True, 0.99999, "mixed"), (True, 0.9999, "fp16")):
        plan = _plan(target, outliers)
        assert plan.exact_units, "the target must keep layers float for fidelity"
        st = plan.steps["exact_storage"]
        assert st["chosen"] == want, (outliers, target, st)
        assert st["of"] == len(plan.exact_units) and st["int8_layers"] == len(plan.exact_int8)
        assert st["bytes"]["int8"] < st["bytes"]["fp16"] * 0.75  # all int8: the file shrinks
        assert st["cosine"]["int8"] < st["cosine"]["fp16"]
        chosen = st["bytes"].get("chosen", st["bytes"][want if want != "mixed" else "int8"])
        assert len(plan.model.SerializeToString()) == chosen
        assert plan.cosine == st["cosine"].get("chosen", st["cosine"]["fp16"])
        assert plan.cosine >= target or st["cosine"]["fp16"] - plan.cosine <= STORAGE_TOL  # the rule holds
        note = next(n for n in plan.notes if "kept float for fidelity:" in n)
        assert {"int8": "all int8", "fp16": "fp16", "mixed": "1/2 int8"}[want] in note, note
        units8 = set(plan.exact_int8)
        codes = [n for n in plan.model.graph.node if n.op_type == "Cast" and n.input[0].endswith("_q8")]
        assert len(codes) == len(units8)  # one int8-coded weight per int8-stored fidelity layer
        if want == "mixed":
            assert plan.exact_int8 == ["fc"] and st["chosen"] == "mixed"
            assert chosen < st["bytes"]["fp16"]
            assert plan.cosine > st["cosine"]["int8"]
        # the ablation variants use the same storage
        v = plan.variant(speed=False)
        assert sum(t.name.endswith("_q8") for t in v.graph.initializer) == len(units8)


def test_gptq_codes_keep_the_outlier_conv_int8_where_round_to_nearest_could_not() -> None:
    # the outlier case above: round-to-nearest int8 storage of conv1 breaks the rule ("mixed"); GPTQ's codes,
    # fitted to conv1's inputs, cost less than the rule's tolerance, so every fidelity float is int8-stored
    rtn, gq = _plan(0.99999, outliers=True), _plan(0.99999, outliers=True, gptq=True)
    a, b = rtn.steps["exact_storage"], gq.steps["exact_storage"]
    assert a["chosen"] == "mixed" and b["chosen"] == "int8", (a, b)
    assert b["cosine"]["int8"] > a["cosine"]["int8"] and b["bytes"]["int8"] == a["bytes"]["int8"]
    assert any(n.startswith("GPTQ rounding of") for n in gq.notes)
    codes, _scale = _decoded_from(gq.model, "conv1")  # same decode chain: int8 codes -> Cast -> Mul
    assert codes.data_type == TensorProto.INT8


def test_int8_storage_may_spend_half_the_headroom_over_the_target() -> None:
    # plan_storage with a stub fidelity: fp16 plan 0.999, each int8-stored fidelity float costs 3e-4 (more than
    # STORAGE_TOL and than 0.1 of the plan's error); half the headroom over the target is what may be spent
    m, feeds = _model(outliers=True), _feeds()
    q = oq.quantize_static_model(m, feeds, oq.parse_format("u8s8-pc"), oq.StaticQuant(keep_activations=True))
    every = {n.name for n in quantized_nodes(q)}
    final = shrink(keep_float(q, every, exact=every, float_model=m, int8_min_elements=16))[0]

    def evaluate(model: onnx.ModelProto, n: int) -> float:
        return 0.999 - 3e-4 * sum("__exact_" in t.name and t.name.endswith("_q8") for t in model.graph.initializer)

    exact = {u: {u} for u in ("conv0", "conv1", "fc")}
    for target, k in ((0.997, 3), (0.998, 1), (0.9985, 0), (0.999, 0)):  # allowed 1e-3, 5e-4, 2.5e-4, 1e-4
        sc = plan_storage(q, m, every, exact, final, evaluate, target, len(feeds))
        assert len(sc.int8_units) == k, (target, sc.why)
        assert sc.cosine == pytest.approx(0.999 - 3e-4 * k)
