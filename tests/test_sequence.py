"""Sequence models (GRU, LSTM, transformer): build, train, safetensors round-trip, ONNX export with
parity, MAC counts against the hand formulas, and INT8 of the recurrent layers (dynamic, static, QAT)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeslim import models
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.measure.onnx_counts import count_onnx
from edgeslim.models.counts import count_macs, count_params
from edgeslim.models.sequence import sequence_layout
from edgeslim.onnxkit.session import run_batched, session
from edgeslim.passes import PASSES, RunContext
from edgeslim.passes.qat import QAT
from edgeslim.passes.quantize_dynamic import QuantizeDynamic
from edgeslim.passes.quantize_int8 import QuantizeInt8
from edgeslim.quant.recurrent import QuantRNN, quantize_rows, weight_only_recurrent
from edgeslim.train import TrainConfig, evaluate, train_model

SEQ = ("gru", "lstm", "transformer")
SMALL = {"gru": {"hidden": 12}, "lstm": {"hidden": 12}, "transformer": {"dim": 16, "depth": 1, "mlp": 32}}


def _ctx(stage: Path, spec: dict, prev: Path | None = None, epochs: int = 1) -> RunContext:
    stage.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, spec=spec, finetune=TrainConfig(epochs=epochs, lr=1e-3),
                      prev_onnx=prev, quiet=True)


def _trained(arch: str, task, epochs: int, **kw) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    spec = models.make_spec(arch, task.input_shape, task.num_classes, **{**SMALL[arch], **kw})
    net = models.build_model(spec)
    train_model(net, task, TrainConfig(epochs=epochs, lr=1e-2), quiet=True)
    return net, spec


@pytest.fixture(scope="module")
def gru(tiny_seq_task, tmp_path_factory):
    """A GRU (hidden 32, frame 4) trained on the tiny sequence task, its spec and FP32 ONNX."""
    net, spec = _trained("gru", tiny_seq_task, 8, hidden=32)
    d = tmp_path_factory.mktemp("gru")
    export_onnx(net, tiny_seq_task.input_shape, d / "fp32.onnx")
    return net, spec, d / "fp32.onnx"


@pytest.mark.parametrize("arch", SEQ)
def test_sequence_model_trains_roundtrips_and_exports(arch, tiny_seq_task, tmp_path):
    t = tiny_seq_task
    net, spec = _trained(arch, t, 1)
    assert 0.0 <= evaluate(net, t.x_test, t.y_test) <= 1.0
    models.save_model(tmp_path / "m", net.eval(), spec)
    back, spec2 = models.load_model(tmp_path / "m")
    x = torch.from_numpy(t.x_test[:8])
    with torch.no_grad():
        assert torch.equal(net(x), back(x))
    assert spec2["arch"] == arch and spec2["kwargs"] == SMALL[arch]
    parity = export_onnx(back, t.input_shape, tmp_path / "m.onnx", check=t.x_test[:32], atol=1e-4)
    assert parity["parity_max_abs_diff"] < 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    want = {"gru": "GRU", "lstm": "LSTM", "transformer": "MatMul"}[arch]
    assert want in ops and "Loop" not in ops  # recurrent layers are real ONNX GRU/LSTM ops, not unrolled
    assert run_batched(session(tmp_path / "m.onnx"), t.x_test[:5]).shape == (5, t.num_classes)  # any batch


def test_frame_and_layout():
    assert sequence_layout((1, 40), None) == (10, 4)  # MNIST-1D: 10 steps of 4 samples
    assert sequence_layout((3, 40), 2) == (20, 6)  # channels x frame features a step
    assert sequence_layout((1, 8, 8), None) == (2, 32)  # images: rows are steps, 4 rows of 8 a step
    assert sequence_layout((13,), None) == (13, 1)  # a prime length: one sample a step
    with pytest.raises(EdgeslimError, match="frame 3 does not divide the sequence length 40"):
        sequence_layout((1, 40), 3)
    net = models.build_model(models.make_spec("gru", (3, 12), 2, hidden=4, frame=2))
    x = torch.arange(72, dtype=torch.float32).reshape(2, 3, 12)
    steps = net.steps_in(x)  # (N, 6 steps, 2 samples x 3 channels), time-major within a frame
    assert steps.shape == (2, 6, 6) and steps[0, 0].tolist() == [0.0, 12.0, 24.0, 1.0, 13.0, 25.0]


@pytest.mark.parametrize("arch,gates", [("gru", 3), ("lstm", 4)])
@pytest.mark.parametrize("layers", [1, 2])
def test_recurrent_macs_match_hand_formula(arch, gates, layers, tmp_path):
    shape, h, frame, classes = (1, 40), 16, 4, 10
    net = models.build_model(models.make_spec(arch, shape, classes, hidden=h, frame=frame, layers=layers))
    steps, width = 40 // frame, frame
    want = sum(steps * gates * h * ((width if i == 0 else h) + h) for i in range(layers)) + h * classes
    assert count_macs(net, shape) == want
    export_onnx(net, shape, tmp_path / "m.onnx")
    c = count_onnx(tmp_path / "m.onnx")
    assert c.macs == want  # the ONNX graph counter agrees (GRU/LSTM nodes counted from X and hidden_size)
    rec = [x for x in c.layers if x.op in ("GRU", "LSTM")]
    assert len(rec) == layers and rec[0].ops == steps * h * (12 if arch == "gru" else 17)


def test_transformer_macs_count_attention(tmp_path):
    d, depth, mlp, tokens = 16, 2, 32, 20
    net = models.build_model(models.make_spec("transformer", (1, 40), 10, dim=d, depth=depth, mlp=mlp))
    stem = 40 * (d // 2) * 5 * 1 + tokens * d * 3 * (d // 2)
    per_block = tokens * (3 * d * d + d * d + 2 * d * mlp) + 2 * tokens * tokens * d  # projections + attention
    want = stem + depth * per_block + d * 10
    assert count_macs(net, (1, 40)) == want
    export_onnx(net, (1, 40), tmp_path / "t.onnx")
    assert count_onnx(tmp_path / "t.onnx").macs == want


def test_models_command_lists_sequence_models():
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "models", "--json"], capture_output=True, text=True,
                       timeout=120)
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["gru"]["macs"] == 10 * 3 * 32 * (4 + 32) + 32 * 10  # default hidden 32, frame 4 on (1, 40)
    assert rows["lstm"]["macs"] == 10 * 4 * 32 * (4 + 32) + 32 * 10
    assert rows["transformer"]["macs"] > 10 * rows["gru"]["macs"] and rows["transformer"]["params"] > 50_000


# ------------------------------------------------------------------------------------------- INT8


def test_weight_only_rows_are_exact_on_a_row_grid():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.01, 0.1, 6).astype(np.float32)
    codes = rng.integers(-127, 128, (1, 6, 5)).astype(np.int8)
    codes[0, :, 0] = 127  # each row reaches the top code, as QAT's derived scales make it
    w = codes.astype(np.float32) * scale.reshape(1, -1, 1)
    c2, s2 = quantize_rows(w)
    assert np.array_equal(c2, codes) and np.allclose(s2, scale, rtol=1e-6)


def test_dynamic_int8_of_gru_shrinks_and_keeps_predictions(gru, tiny_seq_task, tmp_path):
    net, spec, fp32 = gru
    res = PASSES["quantize_dynamic"].fn(None, tiny_seq_task, QuantizeDynamic(), _ctx(tmp_path, spec, fp32))
    assert res.notes["recurrent_weight_only"] == ["GRU"] and "no integer kernel" in res.notes["recurrent_note"]
    g = onnx.load(str(res.onnx)).graph
    int8 = [t for t in g.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 3]
    assert len(int8) == 2  # GRU W and R stored int8
    assert res.onnx.stat().st_size < 0.6 * fp32.stat().st_size
    x = tiny_seq_task.x_test
    a, b = run_batched(session(fp32), x), run_batched(session(res.onnx), x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95 and np.abs(a - b).max() < 0.1 * np.abs(a).max()
    c = count_onnx(res.onnx)
    assert c.macs_by_precision()["fp32"] == 4 * 3 * 32 * (4 + 32)  # 16 samples = 4 steps; weight-only: the GRU computes in FP32
    assert c.weight_bytes < count_onnx(fp32).weight_bytes / 2


def test_dynamic_int8_of_lstm_uses_the_integer_kernel(tiny_seq_task, tmp_path):
    net, spec = _trained("lstm", tiny_seq_task, 2)
    export_onnx(net, tiny_seq_task.input_shape, tmp_path / "fp32.onnx")
    res = PASSES["quantize_dynamic"].fn(None, tiny_seq_task, QuantizeDynamic(),
                                        _ctx(tmp_path / "q", spec, tmp_path / "fp32.onnx"))
    ops = [n.op_type for n in onnx.load(str(res.onnx)).graph.node]
    assert "DynamicQuantizeLSTM" in ops and "recurrent_weight_only" not in res.notes
    assert count_onnx(res.onnx).macs_by_precision().get("int8", 0) >= 4 * 4 * 12 * (4 + 12)  # 4 steps, int8 kernel
    x = tiny_seq_task.x_test
    a, b = run_batched(session(tmp_path / "fp32.onnx"), x), run_batched(session(res.onnx), x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95


def test_static_int8_on_gru_says_what_stays_float(gru, tiny_seq_task, tmp_path):
    net, spec, fp32 = gru
    cfg = QuantizeInt8(select="fixed", calibration_samples=64)
    res = PASSES["quantize_int8"].fn(None, tiny_seq_task, cfg, _ctx(tmp_path, spec, fp32))
    assert res.notes["recurrent_weight_only"] == ["GRU"] and "static QDQ" in res.notes["recurrent_note"]
    assert res.onnx.stat().st_size < 0.6 * fp32.stat().st_size
    acc32 = evaluate(net, tiny_seq_task.x_test, tiny_seq_task.y_test)
    got = run_batched(session(res.onnx), tiny_seq_task.x_test).argmax(1)
    assert (got == tiny_seq_task.y_test).mean() >= acc32 - 0.05


@pytest.mark.parametrize("export", ["exact", "ort"])
def test_qat_fake_quantizes_gru_weights_and_exports_for_ort(gru, tiny_seq_task, tmp_path, export):
    net, spec, _ = gru
    res = PASSES["qat"].fn(copy.deepcopy(net), tiny_seq_task, QAT(weight_bits=8, export=export),
                           _ctx(tmp_path, spec, epochs=2))
    n = res.notes
    assert n["recurrent_weight_only"] == ["GRU"] and n["qdq_layers"] == 1  # the fc head as QDQ
    if export == "exact":  # the learned scales as QDQ: ORT computes what the fake-quant model computes
        assert n["parity_max_abs_diff"] < 1e-3 and n["parity_top1_agreement"] == 1.0
    else:  # ORT's quantizer re-derives the classifier's scales: close, not identical
        assert n["parity_top1_agreement"] >= 0.95 and n["ort_format"].startswith("QDQ")
    g = onnx.load(str(res.onnx)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    dq = [x for x in g.node if x.op_type == "Cast" and inits.get(x.input[0]) is not None
          and inits[x.input[0]].ndim == 3]  # GRU W and R: int8 codes, Cast -> Mul (folded at load)
    assert len(dq) == 2 and all(inits[x.input[0]].dtype == np.int8 for x in dq)
    acc = (run_batched(session(res.onnx), tiny_seq_task.x_test).argmax(1) == tiny_seq_task.y_test).mean()
    assert acc >= evaluate(net, tiny_seq_task.x_test, tiny_seq_task.y_test) - 0.1


def test_quant_rnn_weights_lie_on_the_int8_grid():
    torch.manual_seed(0)
    q = QuantRNN(torch.nn.GRU(3, 5, batch_first=True), bits=4)
    w = q.quantized_weights()["weight_hh_l0"].detach()
    s = w.abs().amax(1, keepdim=True) / 7
    assert torch.allclose(w / s, torch.round(w / s), atol=1e-4) and (w / s).abs().max() <= 7 + 1e-4
    x = torch.randn(2, 4, 3)
    y, _ = q(x)
    y.sum().backward()  # straight-through: the float shadow weights get gradients
    assert q.inner.weight_hh_l0.grad is not None and q.inner.weight_hh_l0.grad.abs().sum() > 0


def test_weight_only_rewrite_leaves_other_models_alone(tmp_path, tiny_seq_task):
    net = models.build_model(models.make_spec("cnn1d", tiny_seq_task.input_shape, 3, width=4))
    export_onnx(net, tiny_seq_task.input_shape, tmp_path / "c.onnx")
    assert weight_only_recurrent(tmp_path / "c.onnx", tmp_path / "d.onnx") == []
    assert (tmp_path / "d.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


def test_params_of_defaults_are_small():
    gru = models.build_model(models.make_spec("gru", (1, 40), 10))
    assert count_params(gru)[0] == 3 * 32 * (4 + 32) + 2 * 3 * 32 + 32 * 10 + 10


def test_structured_pruning_of_the_transformer_keeps_heads_and_residual_width(tiny_seq_task, tmp_path):
    from edgeslim.passes.structured_prune import StructuredPrune

    net, spec = _trained("transformer", tiny_seq_task, 1)
    macs_before = count_macs(net, tiny_seq_task.input_shape)
    cfg = StructuredPrune(ratio=0.5, importance="l2", schedule="oneshot", finetune=TrainConfig(epochs=1))
    res = PASSES["structured_prune"].fn(net, tiny_seq_task, cfg, _ctx(tmp_path, spec))
    ch = res.notes["channels"]
    assert ch["blocks.0.mlp.0"] == [32, 16] and ch["stem.0"] == [8, 4]  # FFN neurons and stem channels go
    assert ch["blocks.0.attn.qkv"] == [48, 48] and ch["stem.2"] == [16, 16]  # heads and residual stream stay
    models.save_model(tmp_path / "p", res.model, spec)
    back, _ = models.load_model(tmp_path / "p")  # layers resized from the stored shapes
    assert back.blocks[0].mlp[0].out_features == 16
    export_onnx(back, tiny_seq_task.input_shape, tmp_path / "p.onnx", check=tiny_seq_task.x_test[:16])
    assert count_macs(back, tiny_seq_task.input_shape) < 0.8 * macs_before
