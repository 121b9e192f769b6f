"""The text-encoder passes on a tiny random BERT: shapes really shrink, importance finds dead units,
distillation recovers, INT8 stores int8 weights without float copies, fusion keeps the outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch  # noqa: E402
from tiny_encoder import make_tiny_bert  # noqa: E402

from edgeslim.errors import EdgeslimError  # noqa: E402
from edgeslim.nlp.encoder import SentenceEncoder, embed, load_encoder  # noqa: E402
from edgeslim.nlp.export import export_encoder, onnx_embed, op_counts_file, weight_storage  # noqa: E402
from edgeslim.nlp.fidelity import mean_cosine  # noqa: E402
from edgeslim.nlp.importance import choose_keep, importance  # noqa: E402
from edgeslim.nlp.surgery import bert_layers, widths  # noqa: E402
from edgeslim.nlp.text import TextTask, sentences  # noqa: E402
from edgeslim.passes import PASSES, RunContext  # noqa: E402
from edgeslim.train import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return load_encoder(make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert"))


@pytest.fixture(scope="module")
def task() -> TextTask:
    t = sentences()
    return TextTask("small", t.train[:96], t.test[:80], t.test_groups[:80])


def copy_of(enc: SentenceEncoder) -> SentenceEncoder:
    return SentenceEncoder(copy.deepcopy(enc.backbone), enc.tokenizer, dict(enc.meta)).eval()


def ctx_for(tmp: Path, teacher: SentenceEncoder, prev: Path | None = None) -> RunContext:
    tmp.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=tmp, spec={}, finetune=TrainConfig(), prev_onnx=prev, quiet=True,
                      teacher_loader=lambda: teacher)


def run_pass(name: str, model, task, tmp: Path, teacher, prev=None, **cfg):
    info = PASSES[name]
    return info.fn(model, task, info.config(**cfg), ctx_for(tmp, teacher, prev))


def test_encoder_passes_are_listed():
    names = {"encoder_prune_heads", "encoder_prune_ffn", "encoder_drop_layers", "encoder_distill",
             "encoder_fuse", "encoder_int8_dynamic", "encoder_int8_static"}
    assert names <= set(PASSES) and {n for n in PASSES if PASSES[n].takes("text")} == names
    assert all(PASSES[n].kinds == ("text",) for n in names)  # declared, not read from the name


@pytest.mark.parametrize("method", ["gradient", "activation"])
def test_importance_finds_a_dead_head_and_neuron(original, task, method):
    st = copy_of(original)
    ly = bert_layers(st.backbone)[0]
    with torch.no_grad():
        ly.attention.output.dense.weight[:, 16:24] = 0  # head 2 of layer 0 writes nothing
        ly.output.dense.weight[:, 5] = 0  # FFN neuron 5 of layer 0 writes nothing
    heads = importance(st, task.train[:32], "heads", method)
    ffn = importance(st, task.train[:32], "ffn", method)
    assert heads[0][2] == pytest.approx(0, abs=1e-12) and heads[0].argmin() == 2
    assert ffn[0][5] == pytest.approx(0, abs=1e-12)
    assert all(s.sum() == pytest.approx(1) for s in heads + ffn)
    keep = choose_keep(heads, 0.25, per_layer=True)
    assert 2 not in keep[0] and [len(k) for k in keep] == [3, 3]


def test_choose_keep_global_and_rounding():
    s = [np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.01, 0.02, 0.03, 0.94])]
    assert choose_keep(s, 0.5, per_layer=False) == [[0, 1, 2], [3]]
    assert choose_keep(s, 0.5, per_layer=False, min_keep=2) == [[0, 1], [2, 3]]
    assert [len(k) for k in choose_keep([np.ones(64) / 64] * 2, 0.3, per_layer=True, multiple=16)] == [48, 48]


def test_prune_heads_pass_shrinks_and_distills(tmp_path, original, task):
    st = copy_of(original)
    ref = embed(original, task.test)
    res = run_pass("encoder_prune_heads", st, task, tmp_path, original, ratio=0.5, importance="activation")
    assert widths(st.backbone)[0] == [2, 2] and res.notes["heads_after"] == [2, 2]
    assert bert_layers(st.backbone)[0].attention.self.key.weight.shape == (16, 32)
    before = mean_cosine(embed(st, task.test), ref)
    res = run_pass("encoder_distill", st, task, tmp_path, original, distill_epochs=3, transfer=100, distill_lr=1e-3)
    after = mean_cosine(embed(st, task.test), ref)
    assert res.notes["distill"]["loss"][-1] < res.notes["distill"]["loss"][0]
    assert after > before  # distillation on calibration sentences brings evaluation embeddings closer


def test_prune_ffn_pass_target_and_errors(tmp_path, original, task):
    st = copy_of(original)
    run_pass("encoder_prune_ffn", st, task, tmp_path, original, target=64, multiple=8, importance="gradient")
    assert widths(st.backbone)[1] == [32, 32]
    assert bert_layers(st.backbone)[1].intermediate.dense.weight.shape == (32, 32)
    with pytest.raises(EdgeslimError, match="exactly one of 'ratio'"):
        run_pass("encoder_prune_ffn", copy_of(original), task, tmp_path, original, ratio=0.5, target=10)
    with pytest.raises(EdgeslimError, match="out of range"):
        run_pass("encoder_prune_ffn", copy_of(original), task, tmp_path, original, target=1000)


def test_drop_layers_pass(tmp_path, original, task):
    st = copy_of(original)
    res = run_pass("encoder_drop_layers", st, task, tmp_path, original, keep=1, distill_epochs=0)
    assert len(bert_layers(st.backbone)) == 1 and st.backbone.config.num_hidden_layers == 1
    assert res.notes["greedy_trail"][0]["dropped"] in (0, 1)
    st2 = copy_of(original)
    res = run_pass("encoder_drop_layers", st2, task, tmp_path, original, drop=[0], distill_epochs=0)
    assert res.notes["layers_kept"] == [1]
    with pytest.raises(EdgeslimError, match="leave a layer"):
        run_pass("encoder_drop_layers", copy_of(original), task, tmp_path, original, drop=[0, 1])


def test_passes_reject_a_non_text_model(tmp_path, original, task):
    with pytest.raises(EdgeslimError, match="works on text encoders"):
        run_pass("encoder_prune_ffn", torch.nn.Linear(2, 2), task, tmp_path, original, ratio=0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, original, task):
    path = tmp_path_factory.mktemp("exp") / "model.onnx"
    export_encoder(original, path, check_texts=task.test[:11])
    return path


def test_int8_dynamic_stores_int8_without_float_copies(tmp_path, original, task, exported):
    res = run_pass("encoder_int8_dynamic", original, task, tmp_path, original, exported, keep_float=1)
    dst = res.onnx
    store = weight_storage(dst)["bytes_by_dtype"]
    src = weight_storage(exported)["bytes_by_dtype"]
    assert res.notes["float_copies_of_int8_weights"] == 0
    assert store.get("int8", 0) + store.get("uint8", 0) > 0.2 * src["float32"]
    assert store["float32"] < 0.35 * src["float32"]  # most float weights are gone, not kept beside int8
    # the file loses at least half the float weight bytes (graph structure is much of such a tiny file)
    assert exported.stat().st_size - dst.stat().st_size > 0.5 * src["float32"]
    assert len(res.notes["kept_float"]) == 1 and res.notes["sensitivity"]
    assert mean_cosine(onnx_embed(dst, original, task.test), embed(original, task.test)) > 0.98
    with pytest.raises(EdgeslimError, match="already quantized"):
        run_pass("encoder_int8_dynamic", original, task, tmp_path / "again", original, dst)
    with pytest.raises(EdgeslimError, match="no node named 'nope'"):
        run_pass("encoder_int8_dynamic", original, task, tmp_path / "bad", original, exported,
                 keep_float_nodes=["nope"])


def test_int8_static_is_calibrated_qdq(tmp_path, original, task, exported):
    res = run_pass("encoder_int8_static", original, task, tmp_path, original, exported, keep_float=1,
                   calibration_samples=16)
    ops = op_counts_file(res.onnx)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert mean_cosine(onnx_embed(res.onnx, original, task.test), embed(original, task.test)) > 0.95


def test_fuse_keeps_outputs_with_pruned_uneven_heads(tmp_path, original, task):
    st = copy_of(original)
    run_pass("encoder_prune_heads", st, task, tmp_path / "p", original, ratio=0.375, per_layer=False,
             importance="activation")
    assert sum(widths(st.backbone)[0]) == 5  # 8 heads - 3, spread unevenly
    src = tmp_path / "pruned.onnx"
    export_encoder(st, src, check_texts=task.test[:11])
    res = run_pass("encoder_fuse", st, task, tmp_path / "f", original, src)
    assert res.notes["fused"].get("Attention") == 2 and "note" not in res.notes
    assert np.abs(onnx_embed(res.onnx, st, task.test) - embed(st, task.test)).max() < 1e-4
