"""Post-training quantization: static INT8 with measured format choice, calibration checks, per-layer
SQNR, dynamic INT8, FP16, INT4 weight-only, and the shipped recipes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import trained

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.quant import check_calibration_input, parse_format
from edgeslim.onnxkit.session import onnx_accuracy, run_batched, session
from edgeslim.passes import PASSES, RunContext
from edgeslim.pipeline import run_recipe
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, train_model

ROOT = Path(__file__).resolve().parents[1]


def _ctx(stage: Path, spec: dict, prev: Path | None = None, epochs: int = 1) -> RunContext:
    stage.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, spec=spec, finetune=TrainConfig(epochs=epochs, lr=1e-3),
                      prev_onnx=prev, quiet=True)


@pytest.fixture(scope="module")
def trained_resnet(tiny_image_task, tmp_path_factory):
    """A ResNet-8 (width 8) trained on the tiny image task, its spec and FP32 ONNX."""
    torch.manual_seed(0)
    spec = models.make_spec("resnet8", tiny_image_task.input_shape, tiny_image_task.num_classes, width=8)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=12, lr=3e-3), quiet=True)
    d = tmp_path_factory.mktemp("r8")
    export_onnx(m, tiny_image_task.input_shape, d / "fp32.onnx")
    return m, spec, d / "fp32.onnx"


def test_ptq_int8_picks_measured_format_and_reports_layers(trained_resnet, tiny_image_task, tmp_path):
    m, spec, fp32 = trained_resnet
    cfg = PASSES["quantize_int8"].config(calibration_samples=64, candidates=("u8s8-rr-pc", "s8s8"), per_layer=False)
    res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _ctx(tmp_path, spec, fp32))
    assert res.onnx is not None and res.onnx.exists()
    session(res.onnx)  # loads in ONNX Runtime
    acc_q = onnx_accuracy(res.onnx, tiny_image_task.x_test, tiny_image_task.y_test)
    acc_f = onnx_accuracy(fp32, tiny_image_task.x_test, tiny_image_task.y_test)
    assert acc_f > 0.9 and acc_q >= acc_f - 0.04
    tried = {r["format"]: r for r in res.notes["tried"]}
    assert set(tried) == {"u8s8-rr-pc", "s8s8"}
    assert all(r["latency_ms_p50"] > 0 and r["fp32_latency_ms_p50"] > 0 for r in tried.values())
    assert res.notes["format"].split()[-1] in tried and res.notes["why"]
    assert fp32.stat().st_size / res.onnx.stat().st_size > 2.5  # int8 weights; tiny model, so overhead counts
    layers = res.notes["layers"]
    assert len(layers) == 10 and all(r["bits"] == 8 for r in layers)  # 9 convs + fc
    assert all(r["weight_scale_min"] > 0 for r in layers)
    sq = [r["sqnr_db"] for r in layers if r["sqnr_db"] is not None]
    assert len(sq) >= 9 and min(sq) > 15  # 8-bit: every layer output well above noise
    assert (tmp_path / "quant_report.json").exists() and not (tmp_path / "candidates").exists()


def test_ptq_fixed_format_and_calibration_methods(trained_resnet, tiny_image_task, tmp_path):
    _, spec, fp32 = trained_resnet
    for method in ("percentile", "entropy"):
        cfg = PASSES["quantize_int8"].config(calibration_samples=32, method=method, select="fixed",
                                             per_channel=False)
        res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _ctx(tmp_path / method, spec, fp32))
        assert res.notes["format"] == "QDQ u8s8-rr" and res.notes["calibration"]["method"] == method
        assert onnx_accuracy(res.onnx, tiny_image_task.x_test, tiny_image_task.y_test) > 0.8


def test_calibration_with_wrong_shape_fails_clearly(trained_resnet, tiny_seq_task, tmp_path):
    _, spec, fp32 = trained_resnet
    with pytest.raises(EdgeslimError, match=r"calibration data has sample shape \(1, 16\) but fp32.onnx"):
        check_calibration_input(fp32, np.zeros((4, 1, 16), np.float32))
    with pytest.raises(EdgeslimError, match="sample shape"):
        PASSES["quantize_int8"].fn(None, tiny_seq_task, PASSES["quantize_int8"].config(),
                                   _ctx(tmp_path, spec, fp32))
    with pytest.raises(EdgeslimError, match="sample shape"):
        PASSES["qat"].fn(trained_resnet[0], tiny_seq_task, PASSES["qat"].config(), _ctx(tmp_path, spec))


def test_bad_format_name_is_a_user_error():
    assert parse_format("u8s8-rr-pc").name == "u8s8-rr-pc"
    with pytest.raises(EdgeslimError, match="unknown integer format 'u4s4'"):
        parse_format("u4s4")


@pytest.fixture(scope="module")
def mlp(tiny_image_task, tmp_path_factory):
    torch.manual_seed(0)
    spec = models.make_spec("lenet300", tiny_image_task.input_shape, tiny_image_task.num_classes, h1=64, h2=32)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=4, lr=3e-3), quiet=True)
    d = tmp_path_factory.mktemp("mlp")
    export_onnx(m, tiny_image_task.input_shape, d / "fp32.onnx")
    return m, spec, d / "fp32.onnx"


@pytest.mark.parametrize("name,max_rel", [("quantize_dynamic", 0.05), ("quantize_fp16", 0.01),
                                          ("quantize_int4_weights", 0.2)])
def test_weight_formats_run_in_ort_and_match(mlp, tiny_image_task, tmp_path, name, max_rel):
    m, spec, fp32 = mlp
    res = PASSES[name].fn(m, tiny_image_task, PASSES[name].config(), _ctx(tmp_path, spec, fp32))
    x = tiny_image_task.x_test
    ref, got = run_batched(session(fp32), x), run_batched(session(res.onnx), x)
    assert np.abs(ref - got).max() <= max_rel * np.abs(ref).max()
    assert (ref.argmax(1) == got.argmax(1)).mean() > 0.95
    ops = {n.op_type for n in onnx.load(str(res.onnx)).graph.node}
    if name == "quantize_dynamic":
        assert res.notes["quantized_matmuls"] == 3 and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    if name == "quantize_int4_weights":
        assert res.notes["matmulnbits_nodes"] >= 2 and "MatMulNBits" in ops
    if name != "quantize_fp16":
        assert res.onnx.stat().st_size < fp32.stat().st_size / 2.5


def test_int4_says_convs_have_no_kernel(trained_resnet, tiny_image_task, tmp_path):
    m, spec, fp32 = trained_resnet
    cfg = PASSES["quantize_int4_weights"].config(block_size=16)
    res = PASSES["quantize_int4_weights"].fn(m, tiny_image_task, cfg, _ctx(tmp_path, spec, fp32))
    assert "no INT4 Conv kernel" in res.notes["note"]
    session(res.onnx)


def test_shipped_ptq_recipe_runs_on_a_sequence_task(tiny_seq_task, tmp_path):
    trained("cnn1d", tiny_seq_task, 3, tmp_path / "m", width=32)
    res = run_recipe(load_recipe(ROOT / "recipes" / "int8-ptq.yaml"), tmp_path / "m", tiny_seq_task,
                     tmp_path / "run", quiet=True)
    base, q = res["stages"]
    assert q["name"] == "quantize_int8" and q["accuracy"] >= base["accuracy"] - 0.05
    assert q["size_bytes"] < base["size_bytes"] / 2
    session(tmp_path / "run" / q["onnx"])
    from typer.testing import CliRunner

    from edgeslim.cli import app

    out = CliRunner().invoke(app, ["quant-report", str(tmp_path / "run"), "--json"])
    assert out.exit_code == 0, out.output
    layers = json.loads(out.output)["01_quantize_int8"]["layers"]
    assert len(layers) == 4  # 3 convs + fc, INT8 or kept float (per_layer: by fidelity or speed), each said
    assert all(r["sqnr_db"] > 15 for r in layers if r["bits"] == 8), [(r["layer"], r["sqnr_db"], r.get("float_because")) for r in layers]
    assert all(r["float_because"] for r in layers if r["bits"] == 32)
    bad = CliRunner().invoke(app, ["quant-report", str(tmp_path)])
    assert isinstance(bad.exception, EdgeslimError) and "not a run or stage folder" in str(bad.exception)


def test_quantizing_twice_is_a_clear_error(trained_resnet, tiny_image_task, tmp_path):
    _, spec, fp32 = trained_resnet
    cfg = PASSES["quantize_int8"].config(calibration_samples=16, select="fixed")
    res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _ctx(tmp_path / "a", spec, fp32))
    with pytest.raises(EdgeslimError, match="already quantized"):
        PASSES["quantize_fp16"].fn(None, tiny_image_task, PASSES["quantize_fp16"].config(),
                                   _ctx(tmp_path / "b", spec, res.onnx))


def _fake_measure(slow_int8: float, slow_all: float = 1.0):
    """A measurement core whose clock is injected: FP32 takes 1 ms per round; a model with activation
    quantization (any QuantizeLinear) `slow_int8` times that; any other model `slow_all` times that.
    Ratios: the real rule; per-kernel profiles: the real one (the clock's `profile`)."""
    from edgeslim.measure.core import Measurer
    from edgeslim.measure.decide import InterleavedClock

    class Clock(InterleavedClock):
        def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
            out = {}
            for k, data in models.items():
                m = onnx.load_from_string(data)
                f = 1.0 if k == "fp32" else (slow_int8 if any(n.op_type == "QuantizeLinear" for n in m.graph.node)
                                             else slow_all)
                jitter = np.random.default_rng(len(k)).normal(0, 0.01, 40)
                out[k] = list(1e-3 * f * (1 + jitter))
            return out

    class Fake(Measurer):
        def clock(self, feed, seconds=3.0, min_rounds=15):
            self.asked = getattr(self, "asked", 0) + 1
            return Clock(dict(feed), seconds=seconds, threads=self.threads, min_rounds=min_rounds)

    return Fake()


def _with(ctx: RunContext, measure) -> RunContext:
    ctx.measure = measure
    return ctx


def test_per_layer_int8_never_picks_slower_than_fp32_silently(trained_resnet, tiny_image_task, tmp_path):
    """Thin layers (a pruned model) where every INT8 kernel is slower: the pass keeps FP32 speed (w8 or an
    all-float plan) instead of picking the least slow INT8 format; if even that were slower, it says so."""
    _, spec, fp32 = trained_resnet
    cfg = PASSES["quantize_int8"].config(calibration_samples=32, candidates=("u8s8-pc", "u8s8-rr-pc"))
    fake = _fake_measure(1.6)
    res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _with(_ctx(tmp_path / "a", spec, fp32), fake))
    assert fake.asked == 1  # the pass times nothing itself: it asks the run's measurement core
    tried = {r["candidate"]: r for r in res.notes["tried"]}
    assert set(tried) == {"int8-mixed", "int8-full", "w8", "w16"}
    assert "slower than the original" in tried["int8-full"]["why"]  # rejected: 1.6x the FP32 time
    # the fp16-weight fallback: FP32 speed, half the file, the FP32 accuracy
    assert tried["w16"]["size_bytes"] < fp32.stat().st_size / 1.8 and tried["w16"]["speedup_vs_fp32"] > 0.95
    assert tried["w16"]["size_bytes"] > tried["w8"]["size_bytes"]  # w8 is smaller at the same speed
    assert res.notes["format"].split()[0] in ("w8", "int8-mixed") and "slower_than_fp32" not in res.notes
    assert fp32.stat().st_size / res.onnx.stat().st_size > 2.5  # weights stored int8 all the same
    assert onnx_accuracy(res.onnx, tiny_image_task.x_test, tiny_image_task.y_test) >= \
        onnx_accuracy(fp32, tiny_image_task.x_test, tiny_image_task.y_test) - 0.04
    # every candidate slower than FP32: the least slow faithful one is written, and the notes say so
    res2 = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg,
                                      _with(_ctx(tmp_path / "b", spec, fp32), _fake_measure(1.6, 1.3)))
    assert "slower" in res2.notes["slower_than_fp32"] and res2.notes["why"].startswith("written although slower")


def test_per_layer_int8_keeps_faster_int8(trained_resnet, tiny_image_task, tmp_path):
    _, spec, fp32 = trained_resnet
    cfg = PASSES["quantize_int8"].config(calibration_samples=32, candidates=("u8s8-pc",))
    res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _with(_ctx(tmp_path, spec, fp32), _fake_measure(0.6)))
    assert res.notes["format"].startswith(("int8-mixed", "int8-full")) and "slower_than_fp32" not in res.notes
    assert res.notes["why"].startswith("won")
