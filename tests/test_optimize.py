"""`edgeslim optimize` on small graphs of our own: multi-input, dynamic axes, Constant weights, opset 11,
an op the quantizer skips, If and Loop bodies; fidelity, choice and tolerance behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_optimize_graphs import const_convnet, if_model, loop_model, multi_input_mlp

from edgeslim.errors import EdgeslimError
from edgeslim.measure.fidelity import Tolerance
from edgeslim.onnxkit.graph import all_nodes, name_nodes, op_counts, save
from edgeslim.onnxkit.inputs import input_specs, synthetic_feeds
from edgeslim.onnxkit.load import load_and_repair
from edgeslim.onnxkit.session import ort_optimize, session
from edgeslim.onnxkit.weight_only import weight_only
from edgeslim.onnxopt.run import OptimizeConfig, optimize_onnx
from edgeslim.quant import calib_select
from edgeslim.quant.int8_plan import Int8Options, quantize

# latency is measured for real; tiny graphs on a loaded CI machine are noisy, so allow 2x in behaviour tests.
# INT8 on these tiny layers is slower than FP32, so the per-layer speed choice (tested on its own in
# test_int8_techniques with injected timings) is off here: these tests are about the rest of the job.
FAST_INT8 = Int8Options(speed_choice=False, adaround=False, formats=("u8s8-pc",))
FAST = dict(samples=8, bench_seconds=0.2, weight_min_elements=64, max_slowdown=1.0, int8=FAST_INT8)


def _cfg(src: Path, out: Path, **kw) -> OptimizeConfig:
    return OptimizeConfig(model=src, out=out, **{**FAST, **kw})


def _outputs(path: Path, feed: dict) -> list[np.ndarray]:
    return session(path).run(None, feed)


def test_multi_input_dynamic_batch(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", a=rng.standard_normal((16, 16)).astype(np.float32),
             b=rng.standard_normal((16, 16)).astype(np.float32))
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx", calib=tmp_path / "calib.npz"))
    out = tmp_path / "out.onnx"
    assert out.is_file() and res["data"] == "calibration" and res["feeds"] == 16  # every given sample is used
    sp = res["samples"]  # --samples 8 calibrate, the other 8 are held out for fidelity
    assert sp["calibration_count"] == 8 and sp["held_out_count"] == 8
    assert sorted(sp["calibration"] + sp["held_out"]) == list(range(16))
    assert res["side_by_side"]["optimised"]["size_bytes"] < res["side_by_side"]["original"]["size_bytes"]
    assert res["original"]["latency_ms_p50"] > 0 and res["side_by_side"]["optimised"]["latency"]["latency_ms_p50"] > 0
    # the written model keeps both inputs, the dynamic batch and both outputs, and stays close
    m = onnx.load(str(out))
    assert [i.name for i in input_specs(m)] == ["a", "b"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    feed = {"a": rng.standard_normal((5, 16)).astype(np.float32), "b": rng.standard_normal((5, 16)).astype(np.float32)}
    ref, got = _outputs(src, feed), _outputs(out, feed)
    assert [r.shape for r in got] == [(5, 4), (5, 32)]
    for r, g in zip(ref, got):
        cos = float((r * g).sum() / (np.linalg.norm(r) * np.linalg.norm(g)))
        assert cos > 0.99
    # the Sin layer is not something the quantizer knows: it is left as it was
    assert op_counts(m).get("Sin") == 1
    chosen = next(c for c in res["candidates"] if c["status"] == "chosen")
    assert chosen["cosine"] >= 0.99 and chosen["name"] == res["chosen"]
    assert res["reason"].startswith(res["chosen"])
    names = {c["name"] for c in res["candidates"]}
    assert names == {"fp32-opt", "w8", "w16", "int8-qdq", "int8-qdq+w8", "int8-qop", "int8-dyn", "fp16"}


def test_constant_weights_and_old_opset_are_repaired(tmp_path: Path) -> None:
    src = const_convnet(tmp_path / "conv.onnx", opset=11)
    loaded = load_and_repair(src)
    assert loaded.source_opset == 11 and loaded.opset == 13
    assert not any(n.op_type == "Constant" for n in loaded.model.graph.node)
    assert {"cw1", "cw2", "fw"} <= {t.name for t in loaded.model.graph.initializer}
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx", candidates=("fp32-opt", "w8", "int8-qdq")))
    assert res["opset"] == {"source": 11, "used": 13}
    assert any("Constant-node" in n for n in res["notes"]) and any("11 -> 13" in n for n in res["notes"])
    w8 = next(c for c in res["candidates"] if c["name"] == "w8")
    assert w8["size_bytes"] < 0.5 * res["original"]["size_bytes"]  # int8 weights: ~4x smaller tensors
    qdq = next(c for c in res["candidates"] if c["name"] == "int8-qdq")
    assert qdq["status"] != "skipped" and qdq["cosine"] is not None
    # the upgrade is for INT8 only: FP32/weight-only outputs keep the source opset
    version = onnx.load(str(tmp_path / "out.onnx")).opset_import[0].version
    assert version == (11 if res["chosen"] in ("w8", "fp32-opt", "original") else 13)
    # per-channel QDQ on the upgraded graph: one weight scale per output channel
    base = ort_optimize(loaded.model)
    feeds, _ = synthetic_feeds(input_specs(base), {}, 4, 0)
    q = quantize(base, feeds, "u8s8-pc", calib_select.minmax(calib_select.collect(base, feeds)), FAST_INT8)
    scales = {t.name: t for t in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("cw2"))
    assert list(scales[dq.input[1]].dims) == [16]


def test_weight_only_is_folded_to_fp32_by_ort(tmp_path: Path) -> None:
    src = const_convnet(tmp_path / "conv.onnx", opset=13)
    m = load_and_repair(src).model
    w8, n = weight_only(m, "int8", min_elements=64)
    assert n == 3
    # int8 tensors replace the float ones; a Cast+Mul decodes each
    kinds = {t.name: t.data_type for t in w8.graph.initializer}
    assert kinds["cw2__q8"] == onnx.TensorProto.INT8 and "cw2" not in kinds
    p = tmp_path / "w8.onnx"
    save(w8, p)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    ref, got = _outputs(src, {"x": x})[0], _outputs(p, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    # a forced fallback threshold keeps every weight fp16 instead
    w16, _ = weight_only(m, "int8", min_elements=64, fp16_below_db=200)
    assert all(not t.name.endswith("__q8") for t in w16.graph.initializer)


def test_if_subgraph_weights_are_lifted_and_compressed(tmp_path: Path) -> None:
    src = if_model(tmp_path / "if.onnx")
    loaded = load_and_repair(src)
    assert not any(n.op_type == "Constant" for n in all_nodes(loaded.model.graph))
    assert {"then_w", "else_w"} <= {t.name for t in loaded.model.graph.initializer}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 32)).astype(np.float32), use_a=np.array(True))
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx", calib=tmp_path / "c.npz", candidates=("fp32-opt", "w8")))
    assert res["chosen"] == "w8"
    x = rng.standard_normal((3, 32)).astype(np.float32)
    for flag in (True, False):  # both branches still compute what they did
        feed = {"x": x, "use_a": np.array(flag)}
        ref, got = _outputs(src, feed)[0], _outputs(tmp_path / "out.onnx", feed)[0]
        assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def test_loop_model_is_handled(tmp_path: Path) -> None:
    src = loop_model(tmp_path / "loop.onnx")
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx"))
    m = onnx.load(str(tmp_path / "out.onnx"))
    assert op_counts(m).get("Loop") == 1
    assert res["side_by_side"]["optimised"]["size_bytes"] < res["side_by_side"]["original"]["size_bytes"]
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    ref, got = _outputs(src, {"x": x})[0], _outputs(tmp_path / "out.onnx", {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05


def test_sqnr_floor_keeps_low_sqnr_layers_float(tmp_path: Path) -> None:
    src = const_convnet(tmp_path / "conv.onnx", opset=13)
    easy = optimize_onnx(_cfg(src, tmp_path / "a.onnx", candidates=("int8-qdq",)))
    hard = optimize_onnx(_cfg(src, tmp_path / "b.onnx", candidates=("int8-qdq",), sqnr_db=80.0))  # no layer is that clean
    assert easy["int8_plan"]["int8_layers"] >= 1
    assert hard["int8_plan"]["int8_layers"] == 0 or any("--sqnr-db" in w for w in hard["int8_plan"]["float_layers"].values())
    assert all(w.startswith("fidelity") for w in hard["int8_plan"]["float_layers"].values())


def test_exclude_op_keeps_those_layers_float(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx", candidates=("w8", "int8-qdq"), exclude_ops={"MatMul"}))
    w8 = next(c for c in res["candidates"] if c["name"] == "w8")
    assert w8["status"].startswith("skipped")  # every large weight belongs to an excluded MatMul
    # static INT8 honours the list: excluded op types keep float weights, the others are quantized
    base = ort_optimize(load_and_repair(src).model)
    name_nodes(base)
    feeds, _ = synthetic_feeds(input_specs(base), {}, 4, 0)
    ranges = calib_select.minmax(calib_select.collect(base, feeds))
    for excluded, kept in (("MatMul", "Gemm"), ("Gemm", "MatMul")):  # ORT fused MatMul+Add into Gemm
        q = quantize(base, feeds, "u8s8-pc", ranges, Int8Options(exclude_ops=frozenset({excluded})))
        dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        # the weight input tells: a DequantizeLinear output for a quantized layer, the float tensor otherwise
        assert all(n.input[1] in dq for n in q.graph.node if n.op_type == kept)
        assert not any(n.input[1] in dq for n in q.graph.node if n.op_type == excluded)


def test_never_slower_writes_original_when_nothing_is_fast_enough(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    res = optimize_onnx(_cfg(src, tmp_path / "out.onnx", max_slowdown=-0.99))  # demand 100x faster
    assert res["chosen"] == "original"
    assert (tmp_path / "out.onnx").read_bytes() == src.read_bytes()
    assert all(not c["status"].startswith(("ok", "chosen")) for c in res["candidates"])


def test_broken_user_tolerance_refuses_then_force_writes(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(EdgeslimError, match="no candidate meets the tolerance"):
        optimize_onnx(_cfg(src, out, tol=Tolerance(min_cosine=1.5), tol_given=True, candidates=("w8", "fp16")))
    assert not out.exists()
    res = optimize_onnx(_cfg(src, out, tol=Tolerance(min_cosine=1.5), tol_given=True, candidates=("w8", "fp16"), force=True))
    assert out.is_file() and any("FORCED" in w for w in res["warnings"])


def test_synthetic_inputs_warn_loudly(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    res = optimize_onnx(_cfg(src, tmp_path / "o.onnx", candidates=("fp32-opt",)))
    assert res["data"] == "synthetic" and "ACCURACY IS NOT CHECKED" in res["warnings"][0]


def test_fidelity_metrics_by_hand() -> None:
    from edgeslim.measure.fidelity import compare_outputs

    ref = [[np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)]]
    got = [[np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 3.0]], np.float32)]]
    f = compare_outputs(["y"], ref, got)
    assert f.max_abs == pytest.approx(3.0) and f.mean_abs == pytest.approx(3.5 / 6)
    assert f.cosine == pytest.approx(5.0 / (np.sqrt(5.0) * np.sqrt(14.25)), rel=1e-6)
    assert f.top1 == pytest.approx(0.5)  # row 2's argmax moved from class 1 to class 2
    # [N, T, C] softmax rows (a CTC recogniser) get per-position top-1; other rank-3 outputs do not
    p = np.full((1, 4, 3), 0.1, np.float32)
    p[0, :, 0] = 0.8
    q = p.copy()
    q[0, 0] = [0.1, 0.8, 0.1]
    assert compare_outputs(["p"], [[p]], [[q]]).top1 == pytest.approx(0.75)
    assert compare_outputs(["b"], [[p * 5]], [[q * 5]]).top1 is None  # [1, 4, 3] not softmax: a detector's rows
    wide = np.zeros((2, 1, 1000), np.float32)
    wide[:, 0, 7] = 5.0
    wide2 = wide.copy()
    wide2[1, 0, 9] = 9.0
    assert compare_outputs(["l"], [[wide]], [[wide2]]).top1 == pytest.approx(0.5)  # CTC logits [T, N, classes]
    assert Tolerance().broken(f) is not None and Tolerance(min_cosine=None).broken(f) is None


def test_external_data_model_is_read_whole(tmp_path: Path) -> None:
    src = multi_input_mlp(tmp_path / "mlp.onnx")
    m = onnx.load(str(src))
    ext = tmp_path / "ext.onnx"
    onnx.save(m, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    assert (tmp_path / "ext.data").is_file() and ext.stat().st_size < src.stat().st_size
    res = optimize_onnx(_cfg(ext, tmp_path / "out.onnx", candidates=("fp32-opt", "w8")))
    # the original's size counts its data file; the output is one self-contained file
    assert res["original"]["size_bytes"] >= src.stat().st_size - 64
    out = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert not any(t.external_data for t in out.graph.initializer)
