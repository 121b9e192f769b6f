"""`encoder_prune_heads`: structured attention-head pruning of a text encoder (Hugging Face folder run).
The query/key/value rows and attention-output columns of the least important heads are removed
(`edgeslim.nlp.prune`), then the encoder can recover by distilling the original's embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeslim.nlp.config import DistillSettings, check_text, recover
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderPruneHeads(PassConfig, DistillSettings):
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of attention heads removed")
    target: int | None = Field(None, ge=1, description="attention heads kept in total (instead of ratio)")
    importance: Literal["gradient", "activation"] = "gradient"
    per_layer: bool = True  # the same share in every layer


@register("encoder_prune_heads", EncoderPruneHeads, kinds=TEXT_ONLY)
def encoder_prune_heads(model: Any, task: Any, cfg: EncoderPruneHeads, ctx: RunContext) -> PassResult:
    """Structured attention-head pruning of a text encoder (Q/K/V and output rows/columns removed)."""
    check_text("encoder_prune_heads", model, task)
    from edgeslim.nlp.prune import prune_attention_heads

    notes = prune_attention_heads(model, task.train, ratio=cfg.ratio, target=cfg.target, method=cfg.importance,
                                  per_layer=cfg.per_layer, seed=ctx.seed)
    notes.update(recover(model, task, cfg, ctx, "heads"))
    return PassResult(model, notes=notes)
