"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, "Variational Dropout Sparsifies Deep
Neural Networks", ICML): every Linear/Conv weight w_ij gets a Gaussian posterior N(theta_ij, sigma_ij^2)
under the log-uniform prior; the network learns which weights to drop.

- Additive noise reparameterisation: the trainable tensors are theta (the layer's own weight) and
  log sigma^2 (one per weight), so the gradient's variance does not grow with alpha = sigma^2 / theta^2.
- Local reparameterisation: a training forward pass samples the pre-activations, b ~ N(x theta,
  x^2 sigma^2), not the weights.
- KL(q || log-uniform prior) ~ -(k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1) per weight,
  with k1 = 0.63576, k2 = 1.87320, k3 = 1.48695 (the paper's eq. 14).
- A weight with log alpha > 3 (dropout rate alpha/(1+alpha) > 0.95) is noise: it is dropped. An eval
  forward pass uses theta with those weights zeroed, so validation shows the pruned network.

`posterior_bits` turns the learnt variances into a bit width per layer (Bayesian Compression's rule,
Louizos, Ullrich & Welling 2017: the posterior's uncertainty says how coarse a layer's grid may be).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14
LOG_ALPHA_CLAMP = 10.0  # log alpha is clamped to [-10, 10] (as the paper's code) for stable KL and masks


def vd_layers(model: nn.Module, skip: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Linear and Conv (1-3 d, any groups; not transposed) layer with a weight, except
    the `skip` names."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight is not None
            and n not in (skip or [])]


class SparseVD(nn.Module):
    """A Linear/Conv layer with a sparse variational dropout posterior over its weight.

    `layer` keeps theta (its weight) and its bias; `log_sigma2` (same shape as the weight) is the extra
    trainable tensor. `threshold`: the log alpha above which a weight counts as dropped."""

    def __init__(self, layer: nn.Module, threshold: float = 3.0, init_log_sigma2: float = -10.0):
        super().__init__()
        self.layer = layer
        self.threshold = threshold
        w = cast(torch.Tensor, cast(Any, layer).weight)
        self.log_sigma2 = nn.Parameter(torch.full_like(w.detach(), init_log_sigma2))

    @property
    def theta(self) -> torch.Tensor:
        return cast(torch.Tensor, cast(Any, self.layer).weight)

    def log_alpha(self) -> torch.Tensor:
        la = self.log_sigma2 - torch.log(self.theta**2 + 1e-8)
        return la.clamp(-LOG_ALPHA_CLAMP, LOG_ALPHA_CLAMP)

    def keep_mask(self) -> torch.Tensor:
        """Weights kept (log alpha <= threshold), as booleans shaped like the weight."""
        return self.log_alpha().detach() <= self.threshold

    def kl(self) -> torch.Tensor:
        """Approximate KL(q || log-uniform prior) of this layer, summed over its weights (nats)."""
        la = self.log_alpha()
        neg_kl = K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * F.softplus(-la) - K1  # softplus(-la) = log(1 + 1/alpha)
        return -neg_kl.sum()

    def _fwd(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, bias)
        return cast(Any, self.layer)._conv_forward(x, w, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = cast(Any, self.layer).bias
        if not self.training:
            return self._fwd(x, self.theta * self.keep_mask().to(self.theta.dtype), bias)
        mu = self._fwd(x, self.theta, bias)
        var = self._fwd(x * x, torch.exp(self.log_sigma2), None)  # local reparameterisation
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def attach(model: nn.Module, threshold: float = 3.0, skip: list[str] | None = None,
           init_log_sigma2: float = -10.0) -> dict[str, SparseVD]:
    """Wrap every Linear/Conv layer of `model` (in place) in `SparseVD`. Returns {layer name: wrapper}."""
    wrapped = {}
    for n, m in vd_layers(model, skip):
        if not n:
            continue  # the model itself is one layer: nothing to wrap it in
        w = SparseVD(m, threshold, init_log_sigma2)
        _set(model, n, w)
        wrapped[n] = w
    return wrapped


@torch.no_grad()
def detach(model: nn.Module, wrapped: dict[str, SparseVD]) -> dict[str, torch.Tensor]:
    """Put the plain layers back with the dropped weights zeroed. Returns each layer's posterior std
    sigma (same shape as its weight) for `posterior_bits`."""
    sigmas = {}
    for n, w in wrapped.items():
        w.theta.mul_(w.keep_mask().to(w.theta.dtype))
        sigmas[n] = torch.exp(0.5 * w.log_sigma2.detach()).clone()
        _set(model, n, w.layer)
    return sigmas


def total_kl(wrapped: dict[str, SparseVD]) -> torch.Tensor:
    return cast(torch.Tensor, sum(w.kl() for w in wrapped.values()))


def layer_sparsity(wrapped: dict[str, SparseVD]) -> dict[str, float]:
    """Fraction of each wrapped layer's weights dropped (log alpha > threshold)."""
    return {n: round(1.0 - float(w.keep_mask().float().mean()), 4) for n, w in wrapped.items()}


def posterior_bits(weight: torch.Tensor, sigma: torch.Tensor, step_scale: float = 1.0,
                   min_bits: int = 1, max_bits: int = 8) -> int:
    """Index bits for a layer's surviving weights from its posterior (Louizos et al. 2017, sec. 4.2: the
    posterior's standard deviation says how finely a weight needs to be stored).

    The grid step may be `step_scale` x the mean posterior std of the surviving weights (noise of that size
    costs nothing by the posterior's own account), so the number of levels over the surviving weights'
    range is range / step: bits = ceil(log2(range / step)), clipped to [min_bits, max_bits]."""
    keep = weight != 0
    if not bool(keep.any()):
        return min_bits
    vals = weight[keep]
    span = float(vals.max() - vals.min())
    step = step_scale * float(sigma[keep].mean())
    if span <= 0 or step <= 0:
        return min_bits
    return int(min(max_bits, max(min_bits, math.ceil(math.log2(max(span / step, 1.0))))))
