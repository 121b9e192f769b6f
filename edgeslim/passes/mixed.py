"""Mixed precision: per-layer weight bit widths from a sensitivity analysis, under a size or energy budget.

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

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.models.probe import probe
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.passes.lowbit import layer_names, quantize_weights
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import WeightCodec, make_codec
from edgeslim.train import TrainConfig


class MixedPrecision(PassConfig):
    bit_choices: tuple[Annotated[int, Field(ge=2, le=8)], ...] = Field((2, 4, 8), min_length=1)
    budget: Literal["size", "bitops"] = "size"
    budget_fraction: float = Field(0.15, gt=0, le=1, description="of the FP32 cost (32-bit weights; 32x32 bitops)")
    sensitivity_samples: int = Field(512, ge=16)
    finetune: TrainConfig | None = None  # default: the recipe's finetune block


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per sample of each Conv/Linear layer (dense)."""
    macs: dict[str, int] = {}
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, fq.QUANTIZABLE):
            def hook(mod: nn.Module, _i: tuple, out: torch.Tensor, n: str = n) -> None:
                w = fq.weight_of(mod)
                macs[n] = int(out[0].numel() * (w[0].numel()))
            hooks.append(m.register_forward_hook(hook))
    probe(model, input_shape, hooks)
    return macs


@torch.no_grad()
def sensitivity(model: nn.Module, x: np.ndarray, names: list[str], bits: tuple[int, ...]) -> dict[str, dict]:
    """{layer: {bits: mean KL(float || layer-quantized)}} in nats."""
    xt = torch.from_numpy(x.astype(np.float32))
    model.eval()
    ref = F.log_softmax(model(xt), 1)
    mods = dict(model.named_modules())
    out: dict[str, dict] = {}
    for n in names:
        w = fq.weight_of(mods[n])
        orig = w.clone()
        out[n] = {}
        for b in bits:
            w.copy_(make_codec(orig, "uniform", b).dequant(orig)[0])
            got = F.log_softmax(model(xt), 1)
            out[n][b] = float(F.kl_div(got, ref, log_target=True, reduction="batchmean"))
        w.copy_(orig)
    return out


def allocate(sens: dict[str, dict], cost: dict[str, int], choices: list[int], budget: float) -> dict[str, int]:
    """Greedy: lower the cheapest-in-sensitivity layer per budget unit saved until sum cost x bits <= budget."""
    bits = {n: choices[-1] for n in sens}

    def total() -> float:
        return sum(cost[n] * b for n, b in bits.items())

    while total() > budget:
        best, best_ratio = None, float("inf")
        for n, b in bits.items():
            i = choices.index(b)
            if i == 0:
                continue
            lower = choices[i - 1]
            saved = cost[n] * (b - lower)
            ratio = max(sens[n][lower] - sens[n][b], 0.0) / max(saved, 1)
            if saved > 0 and ratio < best_ratio:
                best, best_ratio = n, ratio
        if best is None:
            raise EdgeslimError(
                f"mixed_precision: budget {budget:.0f} cannot be met even with every layer at {choices[0]} bits "
                f"(needs {total():.0f}); raise budget_fraction or add a lower bit choice"
            )
        bits[best] = choices[choices.index(bits[best]) - 1]
    return bits


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
    sens = sensitivity(copy.deepcopy(model), task.x_val[: cfg.sensitivity_samples], names, tuple(choices))
    bits = allocate(sens, cost, choices, budget)

    def codec_for(name: str, layer: nn.Module) -> WeightCodec:
        return make_codec(fq.weight_of(layer), "uniform", bits[name])

    _, res = quantize_weights(model, task, ctx, codec_for, cfg.finetune, "mixed_precision")
    used = sum(cost[n] * b for n, b in bits.items())
    res.notes.update({
        "format": "mixed-precision uniform weights " + "/".join(str(b) for b in choices),
        "budget": {"kind": cfg.budget, "unit": unit, "limit": round(budget), "used": used, "fp32": full},
        "bits": bits, "sensitivity_kl": {n: {str(b): round(v, 5) for b, v in s.items()} for n, s in sens.items()},
    })
    return res
