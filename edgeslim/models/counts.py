"""Parameter and MAC counts of a PyTorch model (dense: zeros still cost MACs on dense kernels). The counts
of an ONNX graph (per layer, by precision) are `edgeslim.measure.onnx_counts`.

Counted: Conv and Linear layers; recurrent layers (GRU, LSTM, RNN: `recurrent_macs`); and modules that
do matrix products outside those layers and say how many through a `matmul_macs(input) -> int` method
(per sample; e.g. attention's scores and weighted sum in `edgeslim.models.sequence.Attention`)."""

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


GATES = {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}  # weight blocks per step of nn.RNNBase.mode


def recurrent_macs(m: nn.RNNBase, steps: int) -> int:
    """MACs per sample of a GRU/LSTM/RNN over `steps` time steps: per layer and direction,
    steps x gates x hidden x (input width + recurrent width), plus the LSTM projection if any."""
    dirs = 2 if m.bidirectional else 1
    g, h = GATES[m.mode], m.hidden_size
    rec = getattr(m, "proj_size", 0) or h  # the recurrent state's width (LSTM proj_size)
    total = 0
    for layer in range(m.num_layers):
        width = m.input_size if layer == 0 else rec * dirs
        total += dirs * steps * g * h * (width + rec)
        if rec != h:
            total += dirs * steps * h * rec
    return total


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample, counted by forward hooks (see the module docstring)."""
    macs = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        k = int(torch.tensor(m.kernel_size).prod())
        macs += out.numel() // out.shape[0] * k * (m.in_channels // m.groups)

    def linear_hook(m: nn.Linear, inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() // out.shape[0] * m.in_features

    def rnn_hook(m: nn.RNNBase, inp: tuple, out: object) -> None:
        nonlocal macs
        x = inp[0]
        if not isinstance(x, torch.Tensor):  # a PackedSequence: its lengths vary per sample; not counted
            return
        steps = x.shape[-2] if x.dim() == 2 else (x.shape[1] if m.batch_first else x.shape[0])
        macs += recurrent_macs(m, int(steps))

    def matmul_hook(m: nn.Module, inp: tuple, out: object) -> None:
        nonlocal macs
        macs += int(m.matmul_macs(inp[0]))  # type: ignore[operator]

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.RNNBase):
            hooks.append(m.register_forward_hook(rnn_hook))
        if callable(getattr(m, "matmul_macs", None)):
            hooks.append(m.register_forward_hook(matmul_hook))
    probe(model, input_shape, hooks)
    return int(macs)


def size_counts(model: nn.Module, input_shape: tuple[int, ...], when: str) -> dict[str, int]:
    """{params_<when>, macs_<when>}: what a pass reports of the model before and after it (counts only; the
    run times every stage together, interleaved, at its end)."""
    return {f"params_{when}": count_params(model)[0], f"macs_{when}": count_macs(model, input_shape)}
