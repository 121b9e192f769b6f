"""`lowbit`: low-bit and non-uniform weight quantization (binary, ternary, power-of-two, k-means codebook),
*simulated*: no runtime kernel exists for these formats, so the model keeps float weights that hold
exactly the quantized values (its ONNX is FP32), and the stage size is the real packed weight file
(`weights.packed`: codes at their bit width + scales/codebooks + float biases and norms).

Fine-tuning uses a straight-through estimator over float shadow weights (via `ctx.finetune_model`, so
pruning masks and distillation losses carried by earlier passes apply).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.formats.packed import PACKED_FILE
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import WeightCodec, make_codec
from edgeslim.quant.lowbit import layer_names, quantize_weights
from edgeslim.train import TrainConfig


class LowBit(PassConfig):
    scheme: Literal["binary", "ternary", "pow2", "kmeans", "uniform"] = "ternary"
    bits: int = Field(4, ge=2, le=8, description="bits per weight for pow2/kmeans/uniform (binary=1, ternary=2)")
    keep_first_last: bool = True  # first and last layers at 8-bit uniform (they are small and sensitive)
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


@register("lowbit", LowBit)
def lowbit(model: nn.Module | None, task: Task, cfg: LowBit, ctx: RunContext) -> PassResult:
    """Binary/ternary/power-of-two/k-means weights with STE fine-tuning (simulated, packed size)."""
    assert model is not None
    names = layer_names(model)
    edge = {names[0], names[-1]} if cfg.keep_first_last and len(names) > 2 else set()

    def codec_for(name: str, layer: nn.Module) -> WeightCodec:
        if name in edge:
            return make_codec(fq.weight_of(layer), "uniform", 8)
        return make_codec(fq.weight_of(layer), cfg.scheme, cfg.bits, ctx.seed)

    torch.manual_seed(ctx.seed)
    path = ctx.stage_dir / PACKED_FILE
    baked, notes = quantize_weights(model, task, codec_for,
                                    lambda m: ctx.finetune_model(m, task, cfg.finetune, desc=f"lowbit {cfg.scheme}"), path)
    res = PassResult(baked, artifact=path, notes=notes)
    res.notes["format"] = f"{cfg.scheme} weights" + (f" ({cfg.bits} bit)" if cfg.scheme in ("pow2", "kmeans",
                                                                                             "uniform") else "")
    res.notes["kept_8bit"] = sorted(edge)
    return res
