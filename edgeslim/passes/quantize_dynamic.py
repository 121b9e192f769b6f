"""`quantize_dynamic`: dynamic INT8 with ONNX Runtime's tooling; weights stored int8, activations scaled at
run time. It targets MatMul/Gemm/RNN layers (Gemm is rewritten to MatMul + Add first); Conv layers stay
FP32 and the notes say so. LSTM gets ORT's integer kernel (DynamicQuantizeLSTM); GRU and RNN have none,
so their weights are stored int8 behind a DequantizeLinear (weight-only, `quant.recurrent`), noted."""

from __future__ import annotations

import onnx
from torch import nn

from edgeslim.data import Task
from edgeslim.onnxkit import quant as oq
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import recurrent as rq


class QuantizeDynamic(PassConfig):
    per_channel: bool = False
    reduce_range: bool = True


@register("quantize_dynamic", QuantizeDynamic, consumes="onnx", produces="onnx")
def quantize_dynamic(model: nn.Module | None, task: Task, cfg: QuantizeDynamic, ctx: RunContext) -> PassResult:
    """Dynamic INT8: weights stored int8, activations scaled at run time (for Linear/MatMul/RNN models)."""
    assert ctx.prev_onnx is not None
    oq.check_float(ctx.prev_onnx, "quantize_dynamic")
    mm = ctx.stage_dir / "matmul.onnx"
    n = oq.gemm_to_matmul(ctx.prev_onnx, mm)
    dst = ctx.stage_dir / "model.onnx"
    oq.quantize_dynamic_file(mm, dst, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range)
    mm.unlink()
    weight_only = rq.weight_only_recurrent(dst, dst)  # GRU/RNN: no integer kernel in ORT
    ops = [x.op_type for x in onnx.load(str(dst)).graph.node]
    nq = sum(o in ("MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul") for o in ops)
    note = "Conv layers are left FP32 (dynamic quantization targets MatMul/Gemm/RNN)" if "Conv" in ops else ""
    notes = {"format": "dynamic int8", "gemm_rewritten": n, "quantized_matmuls": nq, "note": note}
    if weight_only:
        notes["recurrent_weight_only"] = weight_only
        notes["recurrent_note"] = rq.NOTE
    return PassResult(None, onnx=dst, notes=notes)
