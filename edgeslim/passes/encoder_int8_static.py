"""`encoder_int8_static`: static INT8 (QDQ) of a text encoder's MatMul layers, activation ranges calibrated
on the calibration sentences, the most sensitive layers kept float."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeslim.nlp.config import check_text
from edgeslim.passes.base import TEXT_ONLY, PassConfig, PassResult, RunContext, register


class EncoderInt8Static(PassConfig):
    per_channel: bool = True
    keep_float: int = Field(2, ge=0, description="most sensitive MatMul layers left float")
    keep_float_nodes: list[str] = Field(default_factory=list, description="ONNX node names left float too")
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: int = Field(128, ge=1, description="calibration sentences (one per batch)")
    sensitivity_samples: int = Field(64, ge=1, description="calibration sentences for the sensitivity scores")


@register("encoder_int8_static", EncoderInt8Static, consumes="onnx", produces="onnx", kinds=TEXT_ONLY)
def encoder_int8_static(model: Any, task: Any, cfg: EncoderInt8Static, ctx: RunContext) -> PassResult:
    """Static INT8 (QDQ, ranges calibrated on the calibration sentences) of a text encoder's MatMuls."""
    check_text("encoder_int8_static", model, task)
    from edgeslim.nlp.ops import int8

    assert ctx.prev_onnx is not None
    dst, notes = int8(model, task, cfg, ctx.prev_onnx, ctx.stage_dir, static=True)
    return PassResult(None, onnx=dst, notes=notes)
