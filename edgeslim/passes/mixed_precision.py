"""`mixed_precision`: per-layer weight bit widths from a sensitivity analysis (`quant.mixed`), under a size
or energy budget.

Sensitivity of layer L at b bits = mean KL divergence (nats) between the float model's softmax outputs
and those of the model with *only* L quantized to b bits (uniform, per channel), on validation
samples. A greedy search starts every layer at the widest choice and repeatedly lowers the layer whose
next step costs the least sensitivity per unit of budget saved, until the budget holds.

Budgets: `size` = weight storage in bits (sum params x bits); `bitops` = an *estimated* energy proxy,
sum MACs x weight bits x 8 activation bits (energy of an integer MAC grows about linearly with the
operand widths). The result is simulated like `lowbit` (packed weight file for the size; FP32 ONNX).
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.formats.packed import PACKED_FILE
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import WeightCodec, make_codec
from edgeslim.quant.lowbit import layer_names, quantize_weights
from edgeslim.quant.mixed import allocate_bits, bit_sensitivity, layer_macs
from edgeslim.train import TrainConfig


class MixedPrecision(PassConfig):
    bit_choices: tuple[Annotated[int, Field(ge=2, le=8)], ...] = Field((2, 4, 8), min_length=1)
    budget: Literal["size", "bitops"] = "size"
    budget_fraction: float = Field(0.15, gt=0, le=1, description="of the FP32 cost (32-bit weights; 32x32 bitops)")
    sensitivity_samples: int = Field(512, ge=16)
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


@register("mixed_precision", MixedPrecision)
def mixed_precision(model: nn.Module | None, task: Task, cfg: MixedPrecision, ctx: RunContext) -> PassResult:
    """Per-layer weight bits from sensitivity analysis under a size or bit-ops budget (simulated)."""
    assert model is not None
    choices = sorted(set(cfg.bit_choices))
    if choices[0] < 2 or choices[-1] > 8:
        raise EdgeslimError(f"mixed_precision.bit_choices: each must be in 2..8, got {list(cfg.bit_choices)}")
    names = layer_names(model)
    mods = dict(model.named_modules())
    if cfg.budget == "size":
        cost = {n: fq.weight_of(mods[n]).numel() for n in names}
        unit, full = "weight bits", sum(cost.values()) * 32
    else:
        cost = {n: m * 8 for n, m in layer_macs(model, task.input_shape).items()}
        unit, full = "bit-ops (estimated energy proxy)", sum(cost.values()) * 32 * 4
    budget = cfg.budget_fraction * full
    sens = bit_sensitivity(copy.deepcopy(model), task.x_val[: cfg.sensitivity_samples], names, tuple(choices))
    bits = allocate_bits(sens, cost, choices, budget)

    def codec_for(name: str, layer: nn.Module) -> WeightCodec:
        return make_codec(fq.weight_of(layer), "uniform", bits[name])

    path = ctx.stage_dir / PACKED_FILE
    baked, notes = quantize_weights(model, task, codec_for,
                                    lambda m: ctx.finetune_model(m, task, cfg.finetune, desc="mixed_precision"), path)
    res = PassResult(baked, artifact=path, notes=notes)
    used = sum(cost[n] * b for n, b in bits.items())
    res.notes.update({
        "format": "mixed-precision uniform weights " + "/".join(str(b) for b in choices),
        "budget": {"kind": cfg.budget, "unit": unit, "limit": round(budget), "used": used, "fp32": full},
        "bits": bits, "sensitivity_kl": {n: {str(b): round(v, 5) for b, v in s.items()} for n, s in sens.items()},
    })
    return res
