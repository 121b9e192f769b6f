"""Low-bit and non-uniform weight quantizers, simulated in PyTorch, and a packed weight file whose size
is the real storage cost of those bit widths.

Schemes (per output channel scales unless said otherwise):
- `uniform`  b-bit symmetric integers [-(2^(b-1)-1), 2^(b-1)-1] x scale (scale = max|w| / qmax).
- `binary`   sign(w) x mean|w| (XNOR-Net, Rastegari 2016): 1 bit/weight.
- `ternary`  {-a, 0, +a} with threshold 0.7 mean|w| (TWN, Li 2016): 2 bits/weight.
- `pow2`     0 or +-max|w| x 2^-k, k in [0, 2^(b-1)-2] (shift-only multiplies): b bits/weight.
- `kmeans`   one 1-D k-means codebook of 2^b float32 values per layer (Deep Compression, Han 2016);
             centroids are fixed after clustering, training moves the shadow weights between them.
Zero weights (pruned) stay exactly zero in every scheme except binary, which has no zero level.
No ONNX Runtime kernel runs these formats; accuracy is measured on the float model holding the
quantized values, so results are *simulated* and say so. Their storage is `edgeslim.formats.packed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgeslim.onnxkit.quant import sqnr_db

SCHEMES = ("uniform", "binary", "ternary", "pow2", "kmeans")


def _per_channel(w: torch.Tensor) -> tuple[int, ...]:
    """Shape for broadcasting a (C_out,) vector over w."""
    return (-1,) + (1,) * (w.dim() - 1)


@dataclass
class WeightCodec:
    """A fixed quantizer for one layer: `codes(w)` -> (uint codes, side info), `__call__(w)` -> values
    with a straight-through gradient."""

    scheme: str
    bits: int
    centroids: torch.Tensor | None = None  # kmeans only

    def dequant(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(quantized values, uint codes, float32 side info: per-channel scales or the codebook)."""
        w = w.detach()
        c = _per_channel(w)
        flat = w.abs().flatten(1)
        if self.scheme == "uniform":
            qmax = 2 ** (self.bits - 1) - 1
            s = (flat.amax(1) / qmax).clamp_min(1e-12)
            q = torch.clamp(torch.round(w / s.reshape(c)), -qmax, qmax)
            return q * s.reshape(c), (q + qmax).to(torch.int64), s.numpy()
        if self.scheme == "binary":
            a = flat.mean(1)
            sign = torch.where(w >= 0, 1.0, -1.0)
            return sign * a.reshape(c), (sign > 0).to(torch.int64), a.numpy()
        if self.scheme == "ternary":
            delta = 0.7 * flat.mean(1)
            mask = w.abs() > delta.reshape(c)
            cnt = mask.flatten(1).sum(1).clamp_min(1)
            a = (w.abs() * mask).flatten(1).sum(1) / cnt
            t = torch.sign(w) * mask
            return t * a.reshape(c), (t + 1).to(torch.int64), a.numpy()
        if self.scheme == "pow2":
            k = 2 ** (self.bits - 1) - 1  # magnitude levels besides zero
            s = flat.amax(1).clamp_min(1e-12)
            r = w.abs() / s.reshape(c)
            e = torch.clamp(torch.round(-torch.log2(r.clamp_min(1e-30))), 0, k - 1)
            zero = r < 2.0 ** (-(k - 1)) / 2
            mag = torch.where(zero, torch.zeros_like(r), 2.0**-e)
            idx = torch.where(zero, torch.zeros_like(e), e + 1)
            code = idx + (w < 0).to(idx.dtype) * (k + 1)  # sign bit on top of the level index
            return torch.sign(w) * mag * s.reshape(c), code.to(torch.int64), s.numpy()
        if self.scheme == "kmeans":
            assert self.centroids is not None
            cb = self.centroids
            idx = (w.reshape(-1, 1) - cb.reshape(1, -1)).abs().argmin(1).reshape(w.shape)
            vals = cb[idx]
            return vals, idx.to(torch.int64), cb.numpy()
        raise ValueError(self.scheme)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        from edgeslim.quant.fakequant import ste

        return ste(w, self.dequant(w)[0])


def make_codec(w: torch.Tensor, scheme: str, bits: int, seed: int = 0) -> WeightCodec:
    """The codec for one weight tensor; kmeans clusters it now (zero kept as a centroid if present)."""
    if scheme == "binary":
        return WeightCodec(scheme, 1)
    if scheme == "ternary":
        return WeightCodec(scheme, 2)
    if scheme != "kmeans":
        return WeightCodec(scheme, bits)
    x = w.detach().flatten().numpy().astype(np.float64)
    has_zero = bool((x == 0).any())
    nz = x[x != 0] if has_zero else x
    cb, _ = kmeans_1d(nz, 2**bits - int(has_zero), init="density", seed=seed)
    if has_zero:
        cb = np.concatenate([[0.0], cb])
    return WeightCodec(scheme, bits, torch.tensor(cb, dtype=torch.float32))


def kmeans_1d(values: np.ndarray, k: int, init: str = "density", iters: int = 300, seed: int = 0,
              tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """k-means of scalars (scikit-learn's Lloyd iterations, one deterministic start) for weight codebooks.

    `k` is capped at the number of distinct values. Start: `linear` (evenly over [min, max], as Deep
    Compression recommends), `density` (evenly on the CDF: quantiles) or `random` (k of the values,
    seeded). `tol`: scikit-learn's relative tolerance on the centroid shift (0: until no value changes
    cluster). Returns (sorted centroids (k',) float64, index of each value's nearest centroid); clusters
    left empty are dropped.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(values, np.float64).ravel()
    k = max(1, min(k, len(np.unique(x))))
    if init == "linear":
        start = np.linspace(x.min(), x.max(), k)
    elif init == "density":
        start = np.quantile(x, np.linspace(0, 1, k))
    else:
        start = x[np.random.default_rng(seed).permutation(len(x))[:k]]
    km = KMeans(n_clusters=k, n_init=1, random_state=seed, init=start.reshape(-1, 1), max_iter=iters, tol=tol)
    c = np.sort(km.fit(x.reshape(-1, 1)).cluster_centers_.ravel())
    c = c[np.bincount(_nearest(x, c), minlength=len(c)) > 0]  # drop empty clusters
    return c, _nearest(x, c)


def _nearest(x: np.ndarray, sorted_c: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted centroids for each value (ties go to the lower one)."""
    return np.searchsorted((sorted_c[1:] + sorted_c[:-1]) / 2, x, side="left")


@torch.no_grad()
def module_layer_sqnr(ref: torch.nn.Module, q: torch.nn.Module, x: np.ndarray, names: list[str]) -> dict[str, float]:
    """SQNR (dB) of each named module's output in `q` against the same module in `ref` on inputs `x`."""
    outs: dict[str, dict[str, torch.Tensor]] = {"ref": {}, "q": {}}
    hooks = []
    for tag, model in (("ref", ref), ("q", q)):
        mods = dict(model.named_modules())
        for n in names:
            if n in mods:
                hooks.append(mods[n].register_forward_hook(
                    lambda _m, _i, o, tag=tag, n=n: outs[tag].__setitem__(n, o.detach())))
    try:
        xt = torch.from_numpy(x.astype(np.float32))
        ref.eval()(xt)
        q.eval()(xt)
    finally:
        for h in hooks:
            h.remove()
    return {n: round(sqnr_db(outs["ref"][n].numpy(), outs["q"][n].numpy()), 2) for n in names if n in outs["q"]}
