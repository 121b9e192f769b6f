"""Mixed precision: per-layer weight bit widths from a sensitivity analysis, under a budget.

Sensitivity of layer L at b bits = mean KL divergence (nats) between the float model's softmax outputs
and those of the model with *only* L quantized to b bits (uniform, per channel), on validation
samples. The greedy allocation starts every layer at the widest choice and repeatedly lowers the layer
whose next step costs the least sensitivity per unit of budget saved, until the budget holds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.models.probe import probe
from edgeslim.quant import fakequant as fq
from edgeslim.quant.codebook import make_codec


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
def bit_sensitivity(model: nn.Module, x: np.ndarray, names: list[str], bits: tuple[int, ...]) -> dict[str, dict]:
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


def allocate_bits(sens: dict[str, dict], cost: dict[str, int], choices: list[int], budget: float) -> dict[str, int]:
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
