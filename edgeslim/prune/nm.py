"""N:M semi-structured sparsity masks: in every group of M consecutive weights along a layer's reduction
axis (input features; for a conv, in_channels x kernel positions as stored), keep the N largest."""

from __future__ import annotations

import torch
from torch import nn

from edgeslim.prune.masks import prunable


@torch.no_grad()
def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """Keep-mask with the N largest |w| of every M consecutive weights along the reduction axis, or None
    when that axis is not a multiple of M (the layer stays dense)."""
    rows = w.reshape(w.shape[0], -1)  # (out, in * k...)
    if rows.shape[1] % m:
        return None
    groups = rows.abs().reshape(rows.shape[0], -1, m)  # (out, in*k/M, M)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(w.shape)


def is_nm(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M along the reduction axis has at most N non-zeros."""
    rows = w.detach().reshape(w.shape[0], -1)
    if rows.shape[1] % m:
        return False
    return bool(((rows != 0).reshape(rows.shape[0], -1, m).sum(2) <= n).all())


def nm_masks(model: nn.Module, n: int, m: int, skip_first: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    masks, skipped = {}, []
    for i, (name, w) in enumerate(prunable(model)):
        mask = None if (skip_first and i == 0) else nm_mask(w, n, m)
        if mask is None:
            skipped.append(name)
        else:
            masks[name] = mask
    return masks, skipped
