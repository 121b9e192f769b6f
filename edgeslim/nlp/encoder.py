"""A sentence encoder: a Hugging Face transformer + pooling (+ L2 normalisation), with its tokenizer.

Loaded from a local Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`, and the
sentence-transformers `modules.json` / `1_Pooling/config.json` when present), offline. Stage folders that
edgeslim writes have the same layout plus `edgeslim_encoder.json`, which records per-layer head and FFN
widths after structured pruning (a Hugging Face config holds one width for all layers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes, write_json, write_text
from edgeslim.nlp import require_transformers

META = "edgeslim_encoder.json"
WEIGHTS = "model.safetensors"


class SentenceEncoder(nn.Module):
    """`forward(input_ids, attention_mask[, token_type_ids]) -> (batch, hidden)` sentence embeddings.

    `meta` holds pooling ('mean', 'cls' or 'max'), normalize, max_length and the per-layer widths;
    `tokenizer` is a `tokenizers.Tokenizer`."""

    backbone: Any  # a transformers PreTrainedModel (typed loosely: its layers are reached by attribute)

    def __init__(self, backbone: nn.Module, tokenizer: Any, meta: dict):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.meta = meta

    @property
    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        return names + (["token_type_ids"] if self.meta.get("token_type_ids") else [])

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mode = self.meta.get("pooling", "mean")
        if mode == "cls":
            e = h[:, 0]
        elif mode == "max":
            e = h.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e9).max(1).values
        else:  # mean over real tokens: (B, T, D) * (B, T, 1) summed over T / token count
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1) if self.meta.get("normalize", True) else e

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.token_states(input_ids, attention_mask, token_type_ids), attention_mask)


# ---- tokenization ---------------------------------------------------------------------------------

def tokenize(enc: Any, texts: list[str], max_length: int | None = None) -> dict[str, np.ndarray]:
    """int64 `input_ids`, `attention_mask` (and `token_type_ids` if the model takes them), padded on the
    right to the longest sentence, truncated at `max_length` tokens (default: the model's). `enc`: anything
    with `tokenizer`, `meta` and `input_names` (a SentenceEncoder, or `edgeslim.measure.text_encoder.OnnxEncoder`)."""
    tok = enc.tokenizer
    tok.no_padding()
    tok.enable_truncation(int(max_length or enc.meta.get("max_length", 128)))
    encs = tok.encode_batch(list(texts))
    n = max(len(e.ids) for e in encs)
    pad = int(enc.meta.get("pad_id", 0))
    ids = np.full((len(encs), n), pad, np.int64)
    mask = np.zeros((len(encs), n), np.int64)
    types = np.zeros((len(encs), n), np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
        types[i, : len(e.ids)] = e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {k: feed[k] for k in enc.input_names}


def synthetic_feed(enc_or_names: SentenceEncoder | list[str], seq: int, batch: int = 1, seed: int = 0,
                   vocab: int = 1000) -> dict[str, np.ndarray]:
    """A feed of `batch` x `seq` int64 token ids (all positions attended), for timing at a fixed length."""
    names = enc_or_names.input_names if isinstance(enc_or_names, SentenceEncoder) else enc_or_names
    rng = np.random.default_rng(seed)
    feed = {"input_ids": rng.integers(min(100, vocab - 1), vocab, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}
    return {k: feed[k] for k in names}


@torch.no_grad()
def embed(enc: SentenceEncoder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Sentence embeddings (N, hidden) from the PyTorch model, float32."""
    enc.eval()
    out = []
    for i in range(0, len(texts), batch):
        feed = tokenize(enc, texts[i : i + batch])
        out.append(enc(**{k: torch.from_numpy(v) for k, v in feed.items()}).float().numpy())
    return np.concatenate(out)


# ---- loading and saving ---------------------------------------------------------------------------

def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise EdgeslimError(f"{p}: unreadable JSON ({e})") from None


def _pooling_meta(folder: Path) -> dict:
    """Pooling and normalisation from sentence-transformers files; mean + normalise when absent."""
    meta: dict = {"pooling": "mean", "normalize": True, "pooling_source": "default (no modules.json)"}
    modules = folder / "modules.json"
    if modules.is_file():
        mods = _read_json(modules)
        meta["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in mods)
        for m in mods:
            if str(m.get("type", "")).endswith("Pooling"):
                pool_cfg = folder / str(m.get("path", "1_Pooling")) / "config.json"
                if not pool_cfg.is_file():  # a wheel that did not ship the pooling folder: mean, said so
                    meta["pooling_note"] = (f"modules.json names {pool_cfg.parent.name}/ for pooling, which is "
                                            "missing; mean pooling used")
                    continue
                cfg = _read_json(pool_cfg)
                if cfg.get("pooling_mode_cls_token"):
                    meta["pooling"] = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    meta["pooling"] = "max"
                elif not cfg.get("pooling_mode_mean_tokens", True):
                    raise EdgeslimError(f"{folder}: pooling mode in {m.get('path')}/config.json is not supported "
                                        "(supported: mean, cls, max)")
        meta["pooling_source"] = "modules.json"
    return meta


def _max_length(folder: Path, config: Any) -> int:
    st = folder / "sentence_bert_config.json"
    if st.is_file() and _read_json(st).get("max_seq_length"):
        return int(_read_json(st)["max_seq_length"])
    return int(min(getattr(config, "max_position_embeddings", 512) or 512, 512))


def check_folder(folder: Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeslimError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    if not (folder / "config.json").is_file():
        raise EdgeslimError(f"{folder}: no config.json; is this a Hugging Face model folder?")
    if not (folder / WEIGHTS).is_file():
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = (f" ({', '.join(pickled)} is a pickle, which edgeslim does not load; convert it to safetensors)"
                if pickled else "")
        raise EdgeslimError(f"{folder}: no {WEIGHTS}{hint}")
    if not (folder / "tokenizer.json").is_file():
        raise EdgeslimError(f"{folder}: no tokenizer.json (a fast tokenizer file is needed to tokenize text)")


def load_encoder(folder: Path) -> SentenceEncoder:
    """Load a Hugging Face folder (or an edgeslim text stage folder) as a SentenceEncoder in eval mode."""
    transformers = require_transformers()
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    folder = Path(folder)
    check_folder(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        raise EdgeslimError(f"{folder / 'config.json'}: not a usable Hugging Face config ({str(e).splitlines()[0]})") from None
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # tokenizers raises its own Exception type for malformed files
        raise EdgeslimError(f"{folder / 'tokenizer.json'}: unreadable tokenizer ({str(e).splitlines()[0]})") from None
    saved = _read_json(folder / META) if (folder / META).is_file() else {}
    meta = dict(saved) if saved else _pooling_meta(folder)
    try:
        backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
    except (ValueError, KeyError) as e:
        raise EdgeslimError(f"{folder}: transformers cannot build this model ({str(e).splitlines()[0]})") from None
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # the classification pooler is unused by sentence pooling
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise EdgeslimError(f"{folder / WEIGHTS}: unreadable safetensors file ({e})") from None
    state = _match_keys(backbone, state)
    if saved.get("heads") or saved.get("ffn"):
        from edgeslim.nlp.surgery import resize_to

        resize_to(backbone, saved.get("heads"), saved.get("ffn"))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise EdgeslimError(f"{folder / WEIGHTS}: weights missing for {len(missing)} tensors, e.g. {missing[0]}")
    if not saved:
        import inspect

        takes = "token_type_ids" in inspect.signature(backbone.forward).parameters
        meta.update(
            source=str(folder.resolve()), model_type=config.model_type, max_length=_max_length(folder, config),
            token_type_ids=bool(takes and getattr(config, "type_vocab_size", 0)),
            pad_id=_pad_id(tokenizer, config),
        )
    return SentenceEncoder(backbone.eval(), tokenizer, meta).eval()


def _match_keys(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a task-head prefix ('bert.', 'roberta.', ...) and legacy LayerNorm names (gamma/beta) so the
    checkpoint's keys meet the base model's; the pooler is dropped."""
    own = set(backbone.state_dict())
    prefix = getattr(backbone, "base_model_prefix", "")
    out = {}
    for k, v in state.items():
        k2 = k[len(prefix) + 1:] if prefix and k.startswith(prefix + ".") and k not in own else k
        k2 = k2.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k2.startswith("pooler.") and k2 not in own:
            continue
        out[k2] = v
    return out


def _pad_id(tokenizer: Any, config: Any) -> int:
    if tokenizer.padding and tokenizer.padding.get("pad_id") is not None:
        return int(tokenizer.padding["pad_id"])
    for t in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(t) is not None:
            return int(tokenizer.token_to_id(t))
    return int(getattr(config, "pad_token_id", 0) or 0)


def save_encoder(folder: Path, enc: SentenceEncoder) -> None:
    """Write the encoder as a Hugging Face-style folder that `load_encoder` reads back exactly."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    cfg = enc.backbone.config
    layers = getattr(getattr(enc.backbone, "encoder", None), "layer", None)
    if layers is not None:
        cfg.num_hidden_layers = len(layers)
    write_text(folder / "config.json", cfg.to_json_string())
    state = {k: v.detach().contiguous().cpu() for k, v in enc.backbone.state_dict().items()}
    write_bytes(folder / WEIGHTS, save(state))
    write_text(folder / "tokenizer.json", enc.tokenizer.to_str())
    write_json(folder / META, enc.meta)


def count_encoder_params(enc: SentenceEncoder) -> int:
    return int(sum(p.numel() for p in enc.backbone.parameters()))
