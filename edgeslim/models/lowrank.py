"""Low-rank factor layers: the replayable spec edits that replace a layer by its factors (so `load_model`
rebuilds a factorised model from safetensors + spec.json), and the decompositions that initialise them.

- Linear `W (out x in)`: truncated SVD, `W ~ (U sqrt(S)) (sqrt(S) V^T)`: two Linears through rank r.
- Conv2d, `spatial` (Jaderberg 2014, scheme 2): a `kh x 1` conv to r channels, then a `1 x kw` conv; the
  factors come from the SVD of the weight reshaped to `(C*kh) x (N*kw)`.
- Conv (1-D or 2-D), `tucker2` (Kim 2016): 1x1 conv C -> r_in, the `k x k` core r_in -> r_out, 1x1 conv
  r_out -> N; factors from the HOSVD of the two channel modes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeslim.models.spec import get_module, register_edit, set_module


def _linear_factors(lin: Any, rank: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(lin.in_features, rank, bias=False),
                         nn.Linear(rank, lin.out_features, bias=lin.bias is not None))


def _spatial_factors(conv: Any, rank: int) -> nn.Sequential:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, (kh, 1), (sh, 1), (ph, 0), bias=False),
        nn.Conv2d(rank, conv.out_channels, (1, kw), (1, sw), (0, pw), bias=conv.bias is not None),
    )


def _tucker2_factors(conv: Any, r_in: int, r_out: int) -> nn.Sequential:
    cls: Any = type(conv)
    return nn.Sequential(
        cls(conv.in_channels, r_in, 1, bias=False),
        cls(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False),
        cls(r_out, conv.out_channels, 1, bias=conv.bias is not None),
    )


@register_edit("lowrank_linear")
def _edit_linear(model: nn.Module, module: str, rank: int) -> None:
    set_module(model, module, _linear_factors(get_module(model, module), rank))  # type: ignore[arg-type]


@register_edit("lowrank_conv_spatial")
def _edit_spatial(model: nn.Module, module: str, rank: int) -> None:
    set_module(model, module, _spatial_factors(get_module(model, module), rank))  # type: ignore[arg-type]


@register_edit("lowrank_conv_tucker2")
def _edit_tucker2(model: nn.Module, module: str, r_in: int, r_out: int) -> None:
    set_module(model, module, _tucker2_factors(get_module(model, module), r_in, r_out))  # type: ignore[arg-type]


def _at(seq: nn.Sequential, i: int) -> Any:
    return seq[i]


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    e = (s.double() ** 2).cumsum(0)
    if e[-1] <= 0:
        return 1
    return int(torch.searchsorted(e / e[-1], torch.tensor(energy - 1e-12, dtype=e.dtype)).item()) + 1


def retained(s: torch.Tensor, r: int) -> float:
    e = s.double() ** 2
    return float(e[:r].sum() / e.sum()) if e.sum() > 0 else 1.0


@torch.no_grad()
def svd_linear(lin: nn.Linear, rank: int) -> nn.Sequential:
    """The rank-`rank` truncated SVD of a Linear as two Linears (the bias stays on the second)."""
    u, s, vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
    r = min(rank, len(s))
    root = s[:r].sqrt()
    seq = _linear_factors(lin, r)
    _at(seq, 0).weight.copy_((root[:, None] * vh[:r]).to(lin.weight.dtype))
    _at(seq, 1).weight.copy_((u[:, :r] * root[None]).to(lin.weight.dtype))
    if lin.bias is not None:
        _at(seq, 1).bias.copy_(lin.bias)
    return seq


@torch.no_grad()
def spatial_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """`kh x 1` then `1 x kw` convs through `rank` channels (exact at full rank)."""
    w = conv.weight.detach().double()  # (N, C, kh, kw)
    n, c, kh, kw = w.shape
    m = w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = min(rank, len(s))
    root = s[:r].sqrt()
    seq = _spatial_factors(conv, r)
    v = (u[:, :r] * root[None]).T.reshape(r, c, kh, 1)
    h = (root[:, None] * vh[:r]).reshape(r, n, kw).permute(1, 0, 2).reshape(n, r, 1, kw)
    _at(seq, 0).weight.copy_(v.to(conv.weight.dtype))
    _at(seq, 1).weight.copy_(h.to(conv.weight.dtype))
    if conv.bias is not None:
        _at(seq, 1).bias.copy_(conv.bias)
    return seq


def mode_svd(w: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    unf = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u, s, _ = torch.linalg.svd(unf, full_matrices=False)
    return u, s


@torch.no_grad()
def tucker2_conv(conv: nn.modules.conv._ConvNd, r_in: int, r_out: int) -> nn.Sequential:
    """Tucker-2 (HOSVD of the output and input channel modes): 1x1, core k x k, 1x1."""
    w = conv.weight.detach().double()  # (N, C, *k)
    u_out, _ = mode_svd(w, 0)
    u_in, _ = mode_svd(w, 1)
    r_out, r_in = min(r_out, u_out.shape[1]), min(r_in, u_in.shape[1])
    u_out, u_in = u_out[:, :r_out], u_in[:, :r_in]
    core = torch.einsum("nc...,no,ci->oi...", w, u_out, u_in)
    seq = _tucker2_factors(conv, r_in, r_out)
    extra = (1,) * (w.dim() - 2)
    _at(seq, 0).weight.copy_(u_in.T.reshape(r_in, -1, *extra).to(conv.weight.dtype))
    _at(seq, 1).weight.copy_(core.to(conv.weight.dtype))
    _at(seq, 2).weight.copy_(u_out.reshape(-1, r_out, *extra).to(conv.weight.dtype))
    if conv.bias is not None:
        _at(seq, 2).bias.copy_(conv.bias)
    return seq
