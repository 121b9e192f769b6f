"""Structured pruning of a sentence encoder: attention heads, FFN neurons, whole layers.

Each function edits the encoder in place (weights physically removed, see `edgeslim.nlp.surgery`) and
returns notes: what was removed and the widths before and after. Recovery by distillation is the
caller's (the passes run `edgeslim.nlp.distill` afterwards).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from edgeslim.errors import EdgeslimError
from edgeslim.nlp.encoder import SentenceEncoder, embed
from edgeslim.nlp.fidelity import mean_cosine
from edgeslim.nlp.importance import Method, choose_keep, importance
from edgeslim.nlp.surgery import (
    bert_layers,
    head_dim,
    keep_layers,
    prune_ffn,
    prune_heads,
    record_widths,
    widths,
)


def _ratio(ratio: float | None, target: int | None, total: int, what: str) -> float:
    """The fraction to remove, from `ratio` or from a `target` count to keep."""
    if (ratio is None) == (target is None):
        raise EdgeslimError(f"give exactly one of 'ratio' (fraction of {what} removed) or 'target' ({what} kept)")
    if target is not None:
        if not 0 < target <= total:
            raise EdgeslimError(f"target {target} {what} is out of range: the model has {total}")
        return 1.0 - target / total
    assert ratio is not None
    return ratio


def prune_attention_heads(enc: SentenceEncoder, texts: list[str], *, ratio: float | None, target: int | None,
                          method: Method, per_layer: bool, seed: int) -> dict:
    """Remove the least important heads (at least one stays in every layer)."""
    heads_before, _ = widths(enc.backbone)
    r = _ratio(ratio, target, sum(heads_before), "heads")
    scores = importance(enc, texts, "heads", method, seed)
    keep = choose_keep(scores, r, per_layer, min_keep=1)
    d = head_dim(enc.backbone)
    for ly, k in zip(bert_layers(enc.backbone), keep):
        prune_heads(ly, k, d)
    enc.meta = record_widths(enc.meta, enc.backbone)
    removed = {i: sorted(set(range(n)) - set(k)) for i, (n, k) in enumerate(zip(heads_before, keep))}
    return {"heads_before": heads_before, "heads_after": enc.meta["heads"],
            "removed_heads": {str(i): v for i, v in removed.items() if v}, "importance": method}


def prune_ffn_neurons(enc: SentenceEncoder, texts: list[str], *, ratio: float | None, target: int | None,
                      method: Method, per_layer: bool, multiple: int, seed: int) -> dict:
    """Remove the least important FFN neurons; kept counts rounded to `multiple`."""
    _, ffn_before = widths(enc.backbone)
    r = _ratio(ratio, target, sum(ffn_before), "FFN neurons")
    scores = importance(enc, texts, "ffn", method, seed)
    keep = choose_keep(scores, r, per_layer, min_keep=multiple, multiple=multiple)
    for ly, k in zip(bert_layers(enc.backbone), keep):
        prune_ffn(ly, k)
    enc.meta = record_widths(enc.meta, enc.backbone)
    return {"ffn_before": ffn_before, "ffn_after": enc.meta["ffn"], "importance": method}


def drop_layers(enc: SentenceEncoder, texts: list[str], *, keep: int | None, drop: list[int] | None,
                select: Literal["greedy", "alternate", "top"]) -> dict:
    """Remove whole layers: the ones listed in `drop`, or enough to leave `keep`, chosen greedily (each
    time the layer whose removal costs the least embedding cosine on `texts`), alternately, or from
    the top."""
    n = len(bert_layers(enc.backbone))
    if (keep is None) == (drop is None):
        raise EdgeslimError("drop_layers: give exactly one of 'keep' (layers kept) or 'drop' (layer indices)")
    if drop is not None:
        bad = [i for i in drop if not 0 <= i < n]
        if bad or len(set(drop)) >= n:
            raise EdgeslimError(f"drop_layers.drop: indices must be distinct, in 0..{n - 1}, and leave a layer; "
                                f"got {drop}")
        kept = [i for i in range(n) if i not in set(drop)]
        trail: list[dict] = []
    else:
        assert keep is not None
        if not 1 <= keep <= n:
            raise EdgeslimError(f"drop_layers.keep: must be in 1..{n} (the model has {n} layers), got {keep}")
        kept, trail = _choose_layers(enc, texts, keep, select)
    orig = enc.meta.get("layer_ids", list(range(n)))
    keep_layers(enc.backbone, kept)
    enc.meta = record_widths({**enc.meta, "layer_ids": [orig[i] for i in kept]}, enc.backbone)
    return {"layers_before": n, "layers_kept": [orig[i] for i in kept], "select": select if drop is None else "listed",
            "greedy_trail": trail}


def _choose_layers(enc: SentenceEncoder, texts: list[str], keep: int, select: str) -> tuple[list[int], list[dict]]:
    n = len(bert_layers(enc.backbone))
    if select == "top":
        return list(range(keep)), []
    if select == "alternate":  # spread the kept layers evenly, always keeping the first and the last
        idx = np.linspace(0, n - 1, keep).round().astype(int) if keep > 1 else np.array([n - 1])
        return sorted(set(idx.tolist())), []
    ref = embed(enc, texts)
    kept = list(range(n))
    trail = []
    all_layers = list(bert_layers(enc.backbone))
    try:
        while len(kept) > keep:
            best = None
            for cand in kept:
                trial = [i for i in kept if i != cand]
                enc.backbone.encoder.layer = torch.nn.ModuleList([all_layers[i] for i in trial])
                cos = mean_cosine(embed(enc, texts), ref)
                if best is None or cos > best[1]:
                    best = (cand, cos)
            assert best is not None
            kept.remove(best[0])
            trail.append({"dropped": best[0], "cosine_without_training": round(best[1], 6)})
    finally:
        enc.backbone.encoder.layer = torch.nn.ModuleList(all_layers)
    return kept, trail
