"""`weight_share`: per-layer k-means weight sharing (Deep Compression) with centroid fine-tuning
(`quant.sharing`): linear initialisation over [min, max] as the paper recommends; pruned weights stay 0."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant.sharing import cluster_layer, shared_layers, unshare
from edgeslim.train import TrainConfig, evaluate


class WeightShare(PassConfig):
    bits: int = Field(5, ge=1, le=8, description="index bits per Linear weight: 2^bits shared values per layer")
    conv_bits: int | None = Field(None, ge=1, le=8, description="index bits for Conv layers (default: bits)")
    init: Literal["linear", "density", "random"] = "linear"
    iters: int = Field(30, ge=1)
    layers: list[str] | None = None  # default: every Linear and Conv
    fp16_rest: bool = Field(False, description="round biases/norms to fp16 values after fine-tuning "
                            "(entropy_code then stores them in 2 bytes, losslessly)")
    finetune: TrainConfig | None = None  # default: the recipe's finetune block (centroids only)


@register("weight_share", WeightShare)
def weight_share(model: nn.Module | None, task: Task, cfg: WeightShare, ctx: RunContext) -> PassResult:
    """Per-layer k-means weight sharing (Deep Compression) with centroid fine-tuning."""
    assert model is not None
    stats = {}
    for n, m in shared_layers(model, cfg.layers):
        bits = cfg.conv_bits if (cfg.conv_bits and isinstance(m, nn.modules.conv._ConvNd)) else cfg.bits
        stats[n] = {"bits": bits, **cluster_layer(m, bits, cfg.init, cfg.iters)}
    acc0 = evaluate(model, task.x_val, task.y_val)
    try:
        hist = ctx.finetune_model(model, task, cfg.finetune, desc="weight_share")
    finally:
        unshare(model)  # weights stay exactly codebook[index]; biases and norms were trained too
    if cfg.fp16_rest:
        shared = {id(m.weight) for _, m in shared_layers(model, cfg.layers)}
        with torch.no_grad():
            for p in model.parameters():
                if id(p) not in shared and p.dtype == torch.float32:
                    p.copy_(p.half().float())
    return PassResult(model, notes={"layers": stats, "val_accuracy_before_finetune": acc0,
                                    "val_accuracy": hist["val_accuracy"]})
