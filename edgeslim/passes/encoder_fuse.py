"""`encoder_fuse`: ONNX Runtime's offline transformer fusions (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization) of a text encoder's ONNX graph, per-layer head counts read from the graph; the
fused graph is kept only if its embeddings match the unfused one's."""

from __future__ import annotations

from typing import Any

from edgeslim.nlp.config import check_text
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderFuse(PassConfig):
    pass


@register("encoder_fuse", EncoderFuse, consumes="onnx", produces="onnx", kinds=TEXT_ONLY)
def encoder_fuse(model: Any, task: Any, cfg: EncoderFuse, ctx: RunContext) -> PassResult:
    """ONNX Runtime transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm) of the ONNX."""
    check_text("encoder_fuse", model, task)
    from edgeslim.nlp.ops import fuse

    assert ctx.prev_onnx is not None
    dst, notes = fuse(model, task, ctx.prev_onnx, ctx.stage_dir)
    return PassResult(None, onnx=dst, notes=notes)
