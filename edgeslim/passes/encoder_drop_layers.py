"""`encoder_drop_layers`: remove whole layers of a text encoder (chosen greedily by the embedding cosine
they cost on calibration sentences, alternately, from the top, or listed), then distil the shallower
student from the original's sentence embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeslim.nlp.config import DistillSettings, check_text, recover
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderDropLayers(PassConfig, DistillSettings):
    keep: int | None = Field(None, ge=1, description="encoder layers kept")
    drop: list[int] | None = Field(None, description="explicit layer indices to remove (instead of keep)")
    select: Literal["greedy", "alternate", "top"] = "greedy"
    distill_epochs: int = Field(4, ge=0)


@register("encoder_drop_layers", EncoderDropLayers, kinds=TEXT_ONLY)
def encoder_drop_layers(model: Any, task: Any, cfg: EncoderDropLayers, ctx: RunContext) -> PassResult:
    """Remove whole encoder layers, then distil the shallower student from the original's embeddings."""
    check_text("encoder_drop_layers", model, task)
    from edgeslim.nlp.prune import drop_layers

    notes = drop_layers(model, task.train[:128], keep=cfg.keep, drop=cfg.drop, select=cfg.select)
    notes.update(recover(model, task, cfg, ctx, "layers"))
    return PassResult(model, notes=notes)
