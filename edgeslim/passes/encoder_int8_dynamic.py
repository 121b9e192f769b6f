"""`encoder_int8_dynamic`: dynamic INT8 of a text encoder's ONNX graph (MatMul / Attention weights and the
embedding tables stored int8, activations scaled at run time), the most sensitive layers kept float."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgeslim.nlp.config import check_text
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderInt8Dynamic(PassConfig):
    per_channel: bool = True  # one weight scale per output channel: much closer embeddings, same kernels
    keep_float: int = Field(0, ge=0, description="most sensitive MatMul/Attention layers left float")
    keep_float_nodes: list[str] = Field(default_factory=list, description="ONNX node names left float too")
    embeddings: bool = True  # also store the embedding tables as int8 (the largest weights)
    sensitivity_samples: int = Field(64, ge=1, description="calibration sentences for the sensitivity scores")


@register("encoder_int8_dynamic", EncoderInt8Dynamic, consumes="onnx", produces="onnx", kinds=TEXT_ONLY)
def encoder_int8_dynamic(model: Any, task: Any, cfg: EncoderInt8Dynamic, ctx: RunContext) -> PassResult:
    """Dynamic INT8 of a text encoder's MatMul/Attention layers (int8 weights), sensitive layers float."""
    check_text("encoder_int8_dynamic", model, task)
    from edgeslim.nlp.ops import int8

    assert ctx.prev_onnx is not None
    dst, notes = int8(model, task, cfg, ctx.prev_onnx, ctx.stage_dir, static=False)
    return PassResult(None, onnx=dst, notes=notes)
