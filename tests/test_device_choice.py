"""Speed decisions made for the run's device (`quant.device_choice`, `measure.device_clock`): timed on this host
only when the device is the host (or the same runtime on the same CPU), from the device's cost model otherwise;
on a Cortex-M4 the INT8 plan is full INT8 in TFLite's int8 scheme and the notes say how it was decided."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.devices import load_device
from edgeslim.measure.core import Measurer
from edgeslim.measure.decide import InterleavedClock
from edgeslim.measure.device_clock import EstimatedClock, clock_for
from edgeslim.passes import PASSES, RunContext
from edgeslim.quant import device_choice as dc
from edgeslim.quant.int8_plan import Int8Options
from edgeslim.train import TrainConfig, train_model


def test_which_devices_are_timed_here():
    host, m4 = load_device("host"), load_device("cortex-m4")
    assert dc.timed_here(host) and not dc.timed_here(m4)
    assert dc.runtime_of(m4) == "tflite-micro" and "tflite" == dc.runtime_of(load_device("cortex-a53"))
    same = host.model_copy(update={"name": "my-x86-box", "arch": dc.host_arch(), "runtime": "onnxruntime"})
    other = same.model_copy(update={"arch": "riscv64"})
    assert dc.timed_here(same) and not dc.timed_here(other)
    assert dc.decided_by(m4) == "decided for cortex-m4 from its cost model (calibrated)"
    assert dc.decided_by(host) == "timed on this host"
    assert dc.int8_speedup(m4) == pytest.approx(4.0)  # SMLAD 2 MACs/cycle vs FPU 0.5


def test_options_for_a_microcontroller_are_full_int8_in_tflites_scheme():
    notes: list[str] = []
    o = dc.adapt_options(Int8Options(), load_device("cortex-m4"), notes)
    assert o.formats == ("s8s8-pc",) and o.speed_choice is False and o.fidelity_fallback
    assert "decided for cortex-m4 from its cost model" in notes[0] and "4.0x" in notes[0]
    host_notes: list[str] = []
    assert dc.adapt_options(Int8Options(), load_device("host"), host_notes) == Int8Options()
    assert host_notes == ["speed decisions: timed on this host"]
    # a device whose scheme is not among the candidates: the first candidate
    assert dc.adapt_options(Int8Options(formats=("u8s8-pc",)), load_device("cortex-m4"), []).formats == ("u8s8-pc",)


@pytest.fixture(scope="module")
def r8(tiny_image_task, tmp_path_factory):
    torch.manual_seed(0)
    spec = models.make_spec("resnet8", tiny_image_task.input_shape, tiny_image_task.num_classes, width=8)
    m = models.build_model(spec)
    train_model(m, tiny_image_task, TrainConfig(epochs=8, lr=3e-3), quiet=True)
    d = tmp_path_factory.mktemp("r8dc")
    export_onnx(m, tiny_image_task.input_shape, d / "fp32.onnx")
    return spec, d / "fp32.onnx"


def test_clock_for_picks_the_cost_model_off_host(r8):
    _, fp32 = r8
    feed = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    assert isinstance(clock_for(load_device("host"), feed), InterleavedClock)
    assert isinstance(Measurer(device="host").clock(feed), InterleavedClock)
    c = Measurer(device="cortex-m4").clock(feed)
    assert isinstance(c, EstimatedClock) and c.method.startswith("estimated:calibrated@cortex-m4")
    t = c.times({"a": fp32.read_bytes(), "b": fp32.read_bytes()})
    assert t["a"] == t["b"] and t["a"][0] > 0  # deterministic: the same model, the same estimate
    assert c.ratio(t["a"], t["b"]).speed_verdict() == "tied"


def _ctx(stage: Path, spec: dict, prev: Path, device: str) -> RunContext:
    stage.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, spec=spec, finetune=TrainConfig(epochs=1), prev_onnx=prev, quiet=True,
                      measure=Measurer(device=device))


def test_int8_stage_for_cortex_m4_is_full_int8_decided_by_its_cost_model(r8, tiny_image_task, tmp_path):
    """The host would keep layers float where ORT's INT8 kernel is slower; the microcontroller's cost model
    (INT8 4x the FP32 MAC rate) makes every layer INT8 and the whole-model pick int8-full."""
    spec, fp32 = r8
    cfg = PASSES["quantize_int8"].config(calibration_samples=32, min_cosine=0.9)
    res = PASSES["quantize_int8"].fn(None, tiny_image_task, cfg, _ctx(tmp_path, spec, fp32, "cortex-m4"))
    n = res.notes
    assert n["format"].startswith("int8-full (s8s8-pc") and n["float_layers"] == {}
    assert n["speed_decisions"].startswith("estimated:calibrated@cortex-m4")
    assert any("decided for cortex-m4 from its cost model" in s for s in n["plan_notes"])
    tried = {r["candidate"]: r for r in n["tried"]}
    # estimated times: full INT8 about 4x faster than FP32 there, w8 (FP32 compute) no faster
    assert tried["int8-full"]["speedup_vs_fp32"] > 2.5 and tried["w8"]["speedup_vs_fp32"] <= 1.05


def test_compile_for_another_device_writes_no_host_kernels(tmp_path):
    """`compile --level all` for a microcontroller: the highest level without ONNX Runtime's CPU-specific
    kernels is written, and said; for this host the file says it is for this CPU."""
    import onnx
    from test_deploy_optimize import conv_bn_relu

    from edgeslim.deploy.compile import compile_onnx, host_specific_ops
    from edgeslim.onnxkit.graph import op_counts

    _, m = conv_bn_relu()
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    here = compile_onnx(src, tmp_path / "host.onnx", "all")
    assert host_specific_ops({}, here["ops_after"]) and "is for this CPU" in here["for_this_cpu"]  # NCHWc here
    m4 = compile_onnx(src, tmp_path / "m4.onnx", "all", device="cortex-m4")
    ops = op_counts(onnx.load(str(tmp_path / "m4.onnx")), qualified=True)
    assert host_specific_ops({}, ops) == [] and "for_this_cpu" not in m4 and m4["level"] == "basic"
    assert "does not run: wrote level 'basic' instead" in m4["device_note"] and "cortex-m4" in m4["device_note"]
    assert m4["parity_max_abs_diff"] is not None and m4["parity_max_abs_diff"] < 1e-4


def test_optimize_for_a_microcontroller_picks_by_its_cost_model(tmp_path):
    """`optimize --device cortex-m4`: the INT8 plan and the pick come from the device's cost model (full INT8
    is ~4x FP32 there, whatever this host's timer says); the reason names how it was decided."""
    from test_optimize_graphs import const_convnet

    from edgeslim.onnxopt.run import OptimizeConfig, optimize_onnx

    src = const_convnet(tmp_path / "conv.onnx", opset=13)
    res = optimize_onnx(OptimizeConfig(model=src, out=tmp_path / "o.onnx", samples=8, bench_seconds=0.2,
                                  weight_min_elements=64, device="cortex-m4", prefer="speed",
                                  int8=Int8Options(adaround=False), candidates=("w8", "int8-qdq")))
    assert res["chosen"] == "int8-qdq" and res["reason"].endswith("[decided for cortex-m4 from its cost model "
                                                                  "(calibrated)]")
    plan = res["int8_plan"]
    assert plan["format"] == "s8s8-pc" and not any(w.startswith("slower") for w in plan["float_layers"].values())
    assert any("decided for cortex-m4" in n for n in plan["notes"])
