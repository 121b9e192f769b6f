"""Weight sharing by clustering (Deep Compression, Han et al. 2016): every Linear/Conv layer's non-zero
weights are clustered into `2^bits` centroids (`codebook.kmeans_1d`), and the layer's weight becomes
`codebook[index]` through a parametrisation, so training moves only the centroids: a centroid's gradient
is the sum of the gradients of its weights. Pruned (zero) weights stay zero.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeslim.errors import EdgeslimError
from edgeslim.quant.codebook import kmeans_1d


def shared_layers(model: nn.Module, names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules()
           if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and (names is None or n in names)]
    if names is not None:
        missing = set(names) - {n for n, _ in out}
        if missing:
            raise EdgeslimError(f"weight_share: no Linear/Conv layer {', '.join(sorted(missing))}")
    return out


class SharedWeight(nn.Module):
    """Parametrisation `weight = [0, *codebook][index]`; the trainable tensor is the codebook."""

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, codebook: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)  # 0 = pruned weight, i = codebook[i - 1]
        self.init = codebook.detach().clone()

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.cat([codebook.new_zeros(1), codebook])[self.index]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.init.to(weight.dtype)


@torch.no_grad()
def cluster_layer(m: nn.Module, bits: int, init: str = "linear", iters: int = 30) -> dict:
    """Cluster a layer's non-zero weights into `2^bits` values in place and attach the codebook
    parametrisation. Returns stats."""
    w: torch.Tensor = cast(Any, m).weight.detach()
    nz = w != 0
    if not bool(nz.any()):
        return {"clusters": 0, "nonzero": 0}
    c, assign = kmeans_1d(w[nz].double().numpy(), 2**bits, init, iters, tol=0.0)
    index = torch.zeros(w.shape, dtype=torch.long)
    index[nz] = torch.from_numpy(assign) + 1
    parametrize.register_parametrization(m, "weight", SharedWeight(index, torch.from_numpy(c).float()), unsafe=True)
    return {"clusters": len(c), "nonzero": int(nz.sum())}


def unshare(model: nn.Module) -> None:
    """Bake the codebooks into plain weights (exactly `codebook[index]`)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(cast(Any, m).parametrizations.weight[0], SharedWeight):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
