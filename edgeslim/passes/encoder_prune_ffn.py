"""`encoder_prune_ffn`: structured FFN-neuron pruning of a text encoder: the intermediate rows and output
columns of the least important neurons are removed (`edgeslim.nlp.prune`), then the encoder can recover
by distilling the original's embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeslim.nlp.config import DistillSettings, check_text, recover
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderPruneFFN(PassConfig, DistillSettings):
    ratio: float | None = Field(None, ge=0, lt=1, description="fraction of FFN neurons removed")
    target: int | None = Field(None, ge=1, description="FFN neurons kept in total (instead of ratio)")
    importance: Literal["gradient", "activation"] = "gradient"
    per_layer: bool = True
    multiple: int = Field(16, ge=1, description="kept neurons per layer rounded to this (aligned GEMM widths)")


@register("encoder_prune_ffn", EncoderPruneFFN, kinds=TEXT_ONLY)
def encoder_prune_ffn(model: Any, task: Any, cfg: EncoderPruneFFN, ctx: RunContext) -> PassResult:
    """Structured FFN-neuron pruning of a text encoder (intermediate rows / output columns removed)."""
    check_text("encoder_prune_ffn", model, task)
    from edgeslim.nlp.prune import prune_ffn_neurons

    notes = prune_ffn_neurons(model, task.train, ratio=cfg.ratio, target=cfg.target, method=cfg.importance,
                              per_layer=cfg.per_layer, multiple=cfg.multiple, seed=ctx.seed)
    notes.update(recover(model, task, cfg, ctx, "ffn"))
    return PassResult(model, notes=notes)
