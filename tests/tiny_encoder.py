"""A tiny randomly initialised BERT-style sentence encoder written as a Hugging Face folder, with a
word-level tokenizer built here: no download. Needs the `nlp` extra (callers importorskip it)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "the a an is are was were it to of and in on for with at by from this that rain snow sun wind cold hot "
    "tomorrow today night morning day week year bus train car bike road city town house room door window "
    "dog cat bird fish tree garden water coffee bread soup cake oven salt meeting report team office work "
    "school exam student teacher book music song band film game match ball team player win lost price bank "
    "money pay card phone laptop battery code bug server data file open closed late early fast slow big "
    "small new old good bad will be has have not no yes can need take make get go come see"
).split()


def make_tiny_bert(folder: Path, layers: int = 2, heads: int = 4, hidden: int = 32, ffn: int = 64,
                   seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(str(folder / "tokenizer.json"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=160, pad_token_id=0,
                     initializer_range=0.3)  # larger weights than BERT's 0.02: sentences embed apart
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(folder))  # config.json + model.safetensors
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    return folder
