"""Loading a Hugging Face folder, tokenising, the ONNX export (int64 inputs, dynamic batch and sequence),
and the structural surgery, on a tiny random BERT built here (no download)."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch  # noqa: E402
from tiny_encoder import make_tiny_bert  # noqa: E402

from edgeslim.errors import EdgeslimError  # noqa: E402
from edgeslim.nlp import is_text_encoder_folder  # noqa: E402
from edgeslim.nlp.encoder import SentenceEncoder, embed, load_encoder, save_encoder, tokenize  # noqa: E402
from edgeslim.nlp.export import export_encoder, onnx_embed  # noqa: E402
from edgeslim.nlp.fidelity import mean_cosine  # noqa: E402
from edgeslim.nlp.surgery import bert_layers, keep_layers, prune_ffn, prune_heads, widths  # noqa: E402

TEXTS = ["the cat sat in the garden", "rain will come tomorrow morning", "the bus was late today",
         "open the window", "a new phone with a big battery", "the team lost the match", "coffee and bread",
         "the school exam is next week", "pay the bank by card", "music and a good song", "the dog is old"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def enc(folder):
    return load_encoder(folder)


def copy_of(enc: SentenceEncoder) -> SentenceEncoder:
    return SentenceEncoder(copy.deepcopy(enc.backbone), enc.tokenizer, dict(enc.meta)).eval()


def test_loads_folder_with_pooling_config(folder, enc):
    assert is_text_encoder_folder(folder) and not is_text_encoder_folder(folder / "1_Pooling")
    assert enc.meta["pooling"] == "mean" and enc.meta["normalize"] and enc.meta["token_type_ids"]
    assert enc.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    e = embed(enc, TEXTS)
    assert e.shape == (len(TEXTS), 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert mean_cosine(e[:1].repeat(len(TEXTS), 0), e) < 0.99  # sentences embed apart


def test_missing_pooling_folder_gets_mean_pooling_with_a_note(tmp_path, folder, enc):
    # a fine-tuned MiniLM in a registry wheel names 1_Pooling/ in modules.json but does not ship it
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    shutil.rmtree(bare / "1_Pooling")
    got = load_encoder(bare)
    assert got.meta["pooling"] == "mean" and "1_Pooling/" in got.meta["pooling_note"]
    assert np.allclose(embed(got, TEXTS[:3]), embed(enc, TEXTS[:3]), atol=1e-6)  # the folder's own mode: mean


def test_tokenize_pads_and_masks(enc):
    f = tokenize(enc, ["the cat", "the cat sat in the garden"])
    assert all(v.dtype == np.int64 for v in f.values())
    assert f["input_ids"].shape == (2, 8)  # [CLS] + 6 words + [SEP]
    assert f["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0]
    # padding must not change a sentence's embedding
    alone = embed(enc, ["the cat"])
    padded = embed(enc, ["the cat", "the cat sat in the garden"])[:1]
    assert np.abs(alone - padded).max() < 1e-5


def test_folder_errors(tmp_path, folder):
    bad = tmp_path / "nobin"
    shutil.copytree(folder, bad)
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(EdgeslimError, match="no model.safetensors .pytorch_model.bin is a pickle"):
        load_encoder(bad)
    notok = tmp_path / "notok"
    shutil.copytree(folder, notok)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(EdgeslimError, match="no tokenizer.json"):
        load_encoder(notok)
    (notok / "tokenizer.json").write_text("{not json")
    with pytest.raises(EdgeslimError, match="unreadable tokenizer"):
        load_encoder(notok)


def test_export_int64_dynamic_batch_and_sequence(tmp_path, enc):
    import onnx

    path = tmp_path / "m.onnx"
    notes = export_encoder(enc, path, check_texts=TEXTS)
    assert notes["parity_max_abs_diff"] < 1e-5
    g = onnx.load(str(path)).graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in g.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in g.output] == ["sentence_embedding"]
    for batch in (TEXTS[:1], TEXTS[:3], [" ".join(TEXTS)]):  # 1 and 3 sentences; one of 50+ tokens
        assert np.abs(onnx_embed(path, enc, batch) - embed(enc, batch)).max() < 1e-5


def test_prune_heads_equals_masking_them(enc):
    """Removing head h gives exactly what the full model gives with head h's context zeroed."""
    feed = {k: torch.from_numpy(v) for k, v in tokenize(enc, TEXTS).items()}
    full = copy_of(enc)
    d = 8
    drop = {0: [1], 1: [0, 3]}

    def zero(li: int):
        def hook(mod, args):
            x = args[0].clone()
            for h in drop[li]:
                x[..., h * d : (h + 1) * d] = 0
            return (x,)
        return hook

    hs = [ly.attention.output.dense.register_forward_pre_hook(zero(i)) for i, ly in enumerate(bert_layers(full.backbone))]
    with torch.no_grad():
        ref = full(**feed)
    for h in hs:
        h.remove()
    pruned = copy_of(enc)
    for i, ly in enumerate(bert_layers(pruned.backbone)):
        prune_heads(ly, [h for h in range(4) if h not in drop[i]], d)
    assert widths(pruned.backbone)[0] == [3, 2]
    assert bert_layers(pruned.backbone)[1].attention.self.query.weight.shape == (16, 32)
    with torch.no_grad():
        got = pruned(**feed)
    assert torch.allclose(got, ref, atol=1e-5)


def test_prune_ffn_and_layers_then_save_load_roundtrip(tmp_path, enc):
    st = copy_of(enc)
    for ly in bert_layers(st.backbone):
        prune_ffn(ly, list(range(0, 64, 2)))
    keep_layers(st.backbone, [1])
    from edgeslim.nlp.surgery import record_widths

    st.meta = record_widths(st.meta, st.backbone)
    assert widths(st.backbone) == ([4], [32])
    assert bert_layers(st.backbone)[0].output.dense.weight.shape == (32, 32)
    save_encoder(tmp_path / "st", st)
    back = load_encoder(tmp_path / "st")
    assert widths(back.backbone) == ([4], [32]) and back.meta["ffn"] == [32]
    assert np.abs(embed(back, TEXTS) - embed(st, TEXTS)).max() < 1e-6
    assert is_text_encoder_folder(tmp_path / "st")


def test_energy_and_macs_of_an_exported_encoder(tmp_path, enc):
    """A BERT export sizes its attention Reshapes from `Shape` ops: only the graph folded at the feed's
    shapes has the MatMul shapes. The energy estimate counted 0 MACs there (MiniLM: 0.015 ms on a
    Cortex-A72); it must count what the graph figures count, ~ 2 x layers x seq x hidden x (4 hidden + 2 ffn)."""
    from edgeslim.measure.core import measure_model

    path = tmp_path / "enc.onnx"
    export_encoder(enc, path)
    m = measure_model(path, shapes=[f"{n}=1,16" for n in enc.input_names], device="cortex-a72", latency=False)
    linear = 2 * 16 * 32 * (4 * 32 + 2 * 64)  # 2 layers x 16 tokens: Q, K, V, O (32x32) and the FFN (32x64, 64x32)
    assert m.macs is not None and m.macs >= linear
    assert sum(m.energy["macs_by_precision"].values()) == m.macs
    assert m.energy["energy_latency_ms"] > 0
