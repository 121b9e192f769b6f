"""`quantize_fp16`: FP16 weights and compute with float32 model inputs/outputs (ONNX Runtime's converter)."""

from __future__ import annotations

import onnx
from torch import nn

from edgeslim.data import Task
from edgeslim.fsutil import write_bytes
from edgeslim.onnxkit import quant as oq
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register


class QuantizeFP16(PassConfig):
    pass


@register("quantize_fp16", QuantizeFP16, consumes="onnx", produces="onnx")
def quantize_fp16(model: nn.Module | None, task: Task, cfg: QuantizeFP16, ctx: RunContext) -> PassResult:
    """FP16 weights and compute (float32 model inputs/outputs kept); halves the file."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_fp16")
    dst = ctx.stage_dir / "model.onnx"
    write_bytes(dst, oq.convert_fp16(onnx.load(str(ctx.prev_onnx))).SerializeToString())
    return PassResult(None, onnx=dst, notes={
        "format": "fp16",
        "note": "ONNX Runtime's CPU provider has few FP16 kernels; it may insert casts, so CPU latency can "
                "be worse than FP32 (the stage latency is measured, not assumed)",
    })
