"""`quantize_int4_weights`: block-wise INT4 weight-only quantization of MatMul/Linear weights (ONNX
Runtime's MatMulNBits); Conv layers stay FP32 (no INT4 Conv kernel) and the notes say so."""

from __future__ import annotations

import onnx
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit import quant as oq
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register


class QuantizeInt4Weights(PassConfig):
    block_size: int = Field(32, ge=16, description="weights per scale along the input dimension (power of 2)")
    symmetric: bool = True


@register("quantize_int4_weights", QuantizeInt4Weights, consumes="onnx", produces="onnx")
def quantize_int4_weights(
    model: nn.Module | None, task: Task, cfg: QuantizeInt4Weights, ctx: RunContext
) -> PassResult:
    """Block-wise INT4 weight-only quantization of MatMul/Linear weights (ORT MatMulNBits)."""
    assert ctx.prev_onnx is not None
    if cfg.block_size & (cfg.block_size - 1):
        raise EdgeslimError(f"quantize_int4_weights.block_size: must be a power of two, got {cfg.block_size}")
    oq.check_float(ctx.prev_onnx, "quantize_int4_weights")
    mm = ctx.stage_dir / "matmul.onnx"
    oq.gemm_to_matmul(ctx.prev_onnx, mm)
    dst = ctx.stage_dir / "model.onnx"
    n = oq.quantize_int4_file(mm, dst, cfg.block_size, cfg.symmetric)
    mm.unlink()
    convs = sum(x.op_type == "Conv" for x in onnx.load(str(dst)).graph.node)
    note = (f"{convs} Conv layers stay FP32: ONNX Runtime has no INT4 Conv kernel" if convs else "")
    if n == 0:
        note = ("no MatMul weight qualified for MatMulNBits (needs K >= 16); model unchanged. " + note).strip()
    return PassResult(None, onnx=dst, notes={"format": f"int4 weight-only, block {cfg.block_size}",
                                             "matmulnbits_nodes": n, "note": note})
