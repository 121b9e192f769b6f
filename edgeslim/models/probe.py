"""Run a model once with forward hooks attached: how passes discover layer shapes, call order and MACs
without tracing. One helper so every caller removes its hooks and restores train/eval mode."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def probe(model: nn.Module, x: torch.Tensor | tuple[int, ...], handles: Iterable[RemovableHandle]) -> torch.Tensor:
    """Run `model` once in eval mode without gradients on `x` (a tensor, or a per-sample shape for a
    batch of one zero input), then remove `handles` and restore the model's previous mode."""
    handles = list(handles)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x if isinstance(x, torch.Tensor) else torch.zeros(1, *x))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
