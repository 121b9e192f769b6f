"""`encoder_distill`: distil the current text encoder from the run's original (its sentence embeddings,
cosine or MSE, plus optionally its last hidden states) on the calibration sentences and transfer ones."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgeslim.nlp.config import DistillSettings, check_text, recover
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderDistill(PassConfig, DistillSettings):
    distill_epochs: int = Field(4, ge=1)


@register("encoder_distill", EncoderDistill, kinds=TEXT_ONLY)
def encoder_distill(model: Any, task: Any, cfg: EncoderDistill, ctx: RunContext) -> PassResult:
    """Distil the current text encoder from the original's sentence embeddings (cosine/MSE)."""
    check_text("encoder_distill", model, task)
    return PassResult(model, notes=recover(model, task, cfg, ctx, "distill"))
