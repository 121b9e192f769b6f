"""Parameter and MAC counts of a PyTorch model (dense: zeros still cost MACs on dense kernels). The counts
of an ONNX graph (per layer, by precision) are `edgeslim.measure.onnx_counts`."""

from __future__ import annotations

import torch
from torch import nn

from edgeslim.models.probe import probe


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) over all trainable tensors."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample, counted on Conv and Linear layers by forward hooks."""
    macs = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        k = int(torch.tensor(m.kernel_size).prod())
        macs += out.numel() // out.shape[0] * k * (m.in_channels // m.groups)

    def linear_hook(m: nn.Linear, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    probe(model, input_shape, hooks)
    return int(macs)
