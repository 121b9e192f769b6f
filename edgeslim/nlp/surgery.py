"""Structural edits of BERT-style encoder layers: weights are physically removed, Linear shapes shrink.

A BERT-style layer (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM...) is
`attention.self.{query,key,value}` (hidden -> heads * head_dim), `attention.output.dense`
(heads * head_dim -> hidden), `intermediate.dense` (hidden -> ffn), `output.dense` (ffn -> hidden).
Removing head h drops rows h*d:(h+1)*d of query/key/value and the same columns of attention.output.dense;
removing FFN neuron j drops row j of intermediate.dense and column j of output.dense. The attention code
reshapes with -1 heads, so no other attribute has to change (we keep them consistent anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgeslim.errors import EdgeslimError


def bert_layers(backbone: Any) -> Any:
    """The encoder's layer list, or one line saying the model's layout is not supported."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    ok = isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(
        hasattr(ly, "attention") and hasattr(ly.attention, "self") and hasattr(ly.attention.self, "query")
        and hasattr(ly, "intermediate") and hasattr(ly, "output") for ly in layers
    )
    if not ok:
        mt = getattr(getattr(backbone, "config", None), "model_type", type(backbone).__name__)
        raise EdgeslimError(
            f"structured passes support BERT-style encoders (encoder.layer[i].attention.self.query ...); "
            f"model type '{mt}' has another layout"
        )
    return layers


def head_dim(backbone: Any) -> int:
    cfg = backbone.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def widths(backbone: Any) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN neurons per layer), read from the current Linear shapes."""
    d = head_dim(backbone)
    layers = bert_layers(backbone)
    return ([ly.attention.self.query.out_features // d for ly in layers],
            [ly.intermediate.dense.out_features for ly in layers])


def _linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output rows `rows` and input columns `cols` of `lin` (None: all)."""
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None and new.bias is not None:
            new.bias.copy_(b)
    return new


def prune_heads(layer: Any, keep: Sequence[int], d: int) -> None:
    """Keep attention heads `keep` (indices into the layer's current heads) of one layer."""
    if not keep:
        raise AssertionError("a layer keeps at least one head")
    idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(keep)])
    sa = layer.attention.self
    sa.query, sa.key, sa.value = (_linear(sa.query, rows=idx), _linear(sa.key, rows=idx), _linear(sa.value, rows=idx))
    layer.attention.output.dense = _linear(layer.attention.output.dense, cols=idx)
    sa.num_attention_heads = len(keep)
    sa.all_head_size = len(keep) * d


def prune_ffn(layer: Any, keep: Sequence[int]) -> None:
    """Keep FFN neurons `keep` of one layer."""
    idx = torch.as_tensor(sorted(keep), dtype=torch.long)
    layer.intermediate.dense = _linear(layer.intermediate.dense, rows=idx)
    layer.output.dense = _linear(layer.output.dense, cols=idx)


def keep_layers(backbone: Any, keep: Sequence[int]) -> None:
    """Keep encoder layers `keep` (indices into the current layers), in order; the config follows."""
    layers = bert_layers(backbone)
    kept = [layers[i] for i in sorted(keep)]
    for new_i, ly in enumerate(kept):  # attention modules index their cache by layer_idx
        for m in ly.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_i
    backbone.encoder.layer = nn.ModuleList(kept)
    backbone.config.num_hidden_layers = len(kept)


def resize_to(backbone: Any, heads: Sequence[int] | None, ffn: Sequence[int] | None) -> None:
    """Give each layer the recorded widths (fresh weights; a state dict is loaded afterwards)."""
    d = head_dim(backbone)
    layers = bert_layers(backbone)
    for i, ly in enumerate(layers):
        if heads is not None and heads[i] != ly.attention.self.query.out_features // d:
            prune_heads(ly, list(range(heads[i])), d)
        if ffn is not None and ffn[i] != ly.intermediate.dense.out_features:
            prune_ffn(ly, list(range(ffn[i])))


def record_widths(enc_meta: dict, backbone: Any) -> dict:
    """`enc_meta` with the current per-layer widths (what `resize_to` needs to load the weights back)."""
    heads, ffn = widths(backbone)
    return {**enc_meta, "heads": heads, "ffn": ffn, "layers": len(heads)}
