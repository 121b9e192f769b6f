"""Low-bit and non-uniform weight quantization (binary, ternary, power-of-two, k-means codebook),
*simulated*: no runtime kernel exists for these formats, so the model keeps float weights that hold
exactly the quantized values (its ONNX is FP32), and the stage size is the real packed weight file
(`weights.packed`: codes at their bit width + scales/codebooks + float biases and norms).

Fine-tuning uses a straight-through estimator over float shadow weights (via `ctx.finetune_model`, so
pruning masks and distillation losses carried by earlier passes apply).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import WeightCodec, layer_sqnr, make_codec, write_packed
from edgeslim.train import TrainConfig, evaluate


class LowBit(PassConfig):
    scheme: Literal["binary", "ternary", "pow2", "kmeans", "uniform"] = "ternary"
    bits: int = Field(4, ge=2, le=8, description="bits per weight for pow2/kmeans/uniform (binary=1, ternary=2)")
    keep_first_last: bool = True  # first and last layers at 8-bit uniform (they are small and sensitive)
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, fq.QUANTIZABLE)]


def quantize_weights(
    model: nn.Module, task: Task, ctx: RunContext, codec_for: Callable[[str, nn.Module], WeightCodec],
    finetune: TrainConfig | None, desc: str,
) -> tuple[nn.Module, PassResult]:
    """Wrap every Conv/Linear with its codec, fine-tune with STE, bake the quantized values, write the
    packed weight file. Returns (baked model, a PassResult to complete)."""
    ref = copy.deepcopy(model).eval()
    codecs: dict[str, WeightCodec] = {}

    def wrap(name: str, layer: nn.Module) -> fq.QuantWrap:
        codecs[name] = codec_for(name, layer)
        return fq.QuantWrap(layer, codecs[name], None)

    fq.wrap_layers(model, wrap)
    before = evaluate(model, task.x_val, task.y_val)
    hist = ctx.finetune_model(model, task, finetune, desc=desc)
    baked = fq.unwrap(model)
    path = ctx.stage_dir / "weights.packed"
    used = write_packed(path, baked.state_dict(), {f"{n}.weight": c for n, c in codecs.items()})
    sq = layer_sqnr(ref, baked, task.x_val[:128], list(codecs))
    mods = dict(baked.named_modules())
    layers = []
    for n in layer_names(ref):  # network order
        c = codecs[n]
        _, _, side = c.dequant(fq.weight_of(mods[n]))
        layers.append({"layer": n, "scheme": c.scheme, "bits": c.bits, "side_min": float(side.min()),
                       "side_max": float(side.max()), "weight_bytes": used[f"{n}.weight"],
                       "sqnr_db": sq.get(n)})
    n_w = sum(fq.weight_of(mods[n]).numel() for n in codecs)
    bits_avg = sum(c.bits * fq.weight_of(mods[n]).numel() for n, c in codecs.items()) / max(1, n_w)
    notes = {
        "simulated": True,
        "note": "simulated: no ONNX Runtime kernel for these bit widths; the ONNX holds float weights with the "
                "quantized values, size_bytes is the packed weight file",
        "val_accuracy_before_finetune": round(before, 6), "val_accuracy": round(hist["val_accuracy"], 6),
        "avg_weight_bits": round(bits_avg, 3), "packed_bytes": path.stat().st_size, "layers": layers,
    }
    return baked, PassResult(baked, artifact=path, notes=notes)


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
    _, res = quantize_weights(model, task, ctx, codec_for, cfg.finetune, f"lowbit {cfg.scheme}")
    res.notes["format"] = f"{cfg.scheme} weights" + (f" ({cfg.bits} bit)" if cfg.scheme in ("pow2", "kmeans",
                                                                                             "uniform") else "")
    res.notes["kept_8bit"] = sorted(edge)
    return res
