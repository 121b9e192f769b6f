"""Low-rank factorisation of Linear and Conv layers, then fine-tuning.

- Linear `W (out x in)`: truncated SVD, `W ~ (U sqrt(S)) (sqrt(S) V^T)`: two Linears through rank r.
- Conv2d, `spatial` (Jaderberg 2014, scheme 2): a `kh x 1` conv to r channels, then a `1 x kw` conv; the
  factors come from the SVD of the weight reshaped to `(C*kh) x (N*kw)`.
- Conv (1-D or 2-D), `tucker2` (Kim 2016): 1x1 conv C -> r_in, the `k x k` core r_in -> r_out, 1x1 conv
  r_out -> N; factors from the HOSVD of the two channel modes.

Ranks come from an energy threshold (the smallest rank keeping that fraction of the squared singular
values) or a target compression of the layer. A layer is factorised only where that lowers its MACs
(counted at the layer's real input size); the others are listed with the reason. Each replacement is a
replayable spec edit, so `load_model` rebuilds the factorised model from safetensors + spec.json.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.measure.macs import count_macs
from edgeslim.models.probe import probe
from edgeslim.models.spec import add_edit, get_module, register_edit, set_module
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register
from edgeslim.train import TrainConfig

# ------------------------------------------------------------------------------------- modules (edits)


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


# ------------------------------------------------------------------------------------- decompositions


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


def _mode_svd(w: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    unf = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u, s, _ = torch.linalg.svd(unf, full_matrices=False)
    return u, s


@torch.no_grad()
def tucker2_conv(conv: nn.modules.conv._ConvNd, r_in: int, r_out: int) -> nn.Sequential:
    """Tucker-2 (HOSVD of the output and input channel modes): 1x1, core k x k, 1x1."""
    w = conv.weight.detach().double()  # (N, C, *k)
    u_out, _ = _mode_svd(w, 0)
    u_in, _ = _mode_svd(w, 1)
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


# ------------------------------------------------------------------------------------- the pass


class LowRank(PassConfig):
    energy: float | None = Field(None, gt=0.0, le=1.0, description="fraction of squared singular values kept")
    compression: float | None = Field(None, gt=1.0, description="target per-layer parameter compression")
    conv_mode: Literal["spatial", "tucker2"] = "tucker2"
    layers: list[str] | None = Field(None, description="layers to consider (default: every Linear and Conv)")
    skip: list[str] = Field(default_factory=list, description="layers never factorised")
    min_mac_reduction: float = Field(1.0, ge=1.0, description="factorise only if layer MACs drop by this factor")
    finetune: TrainConfig | None = None  # default: the recipe's finetune block

    @model_validator(mode="after")
    def _one_rule(self) -> LowRank:
        if self.energy is not None and self.compression is not None:
            raise ValueError("give either 'energy' or 'compression', not both")
        return self


def _ranks_for(cfg: LowRank, m: nn.Module) -> dict[str, Any]:
    """Pick the rank(s) of one layer; returns {'rank': r} or {'r_in':, 'r_out':} with energy kept."""
    energy = cfg.energy if cfg.energy is not None else (None if cfg.compression else 0.9)
    comp = float(cfg.compression or 2.0)
    w = cast(Any, m).weight.detach().double()
    if isinstance(m, nn.Linear):
        s = torch.linalg.svdvals(w)
        r = energy_rank(s, energy) if energy else max(1, math.floor(w.numel() / (comp * sum(w.shape))))
        return {"rank": min(r, len(s)), "energy": retained(s, min(r, len(s)))}
    n, c = w.shape[:2]
    k = int(math.prod(w.shape[2:]))
    if cfg.conv_mode == "spatial":
        kh, kw = w.shape[2:]
        s = torch.linalg.svdvals(w.permute(1, 2, 0, 3).reshape(c * kh, n * kw))
        r = energy_rank(s, energy) if energy else max(1, math.floor(w.numel() / (comp * (c * kh + n * kw))))
        return {"rank": min(r, len(s)), "energy": retained(s, min(r, len(s)))}
    _, s_out = _mode_svd(w, 0)
    _, s_in = _mode_svd(w, 1)
    if energy:
        r_out, r_in = energy_rank(s_out, energy), energy_rank(s_in, energy)
    else:  # r_in = rho*C, r_out = rho*N: rho*(C^2 + N^2) + rho^2*C*N*k = C*N*k / compression
        a, b, target = c * n * k, c * c + n * n, c * n * k / comp
        rho = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
        r_in, r_out = max(1, math.floor(rho * c)), max(1, math.floor(rho * n))
    r_in, r_out = min(r_in, len(s_in)), min(r_out, len(s_out))
    return {"r_in": r_in, "r_out": r_out, "energy": min(retained(s_in, r_in), retained(s_out, r_out))}


def _candidates(model: nn.Module, cfg: LowRank) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    names = dict(model.named_modules())
    if cfg.layers is not None:
        missing = [n for n in cfg.layers if n not in names]
        if missing:
            valid = [n for n, m in names.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
            raise EdgeslimError(f"low-rank: no layer {', '.join(missing)}; Linear/Conv layers: {', '.join(valid)}")
    for n, m in names.items():
        if not n or n in cfg.skip or (cfg.layers is not None and n not in cfg.layers):
            continue
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            out.append((n, m))
    return out


def _input_shapes(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [get_module(model, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:]))) for n in names]
    probe(model, input_shape, hooks)
    return shapes


def factorise(model: nn.Module, spec: dict, input_shape: tuple[int, ...], cfg: LowRank) -> tuple[dict, list[dict]]:
    """Replace layers in place by their factors where that lowers MACs. Returns (new spec, per-layer rows)."""
    cands = _candidates(model, cfg)
    in_shapes = _input_shapes(model, [n for n, _ in cands], input_shape)
    rows = []
    for name, m in cands:
        row: dict[str, Any] = {"layer": name, "type": type(m).__name__, "shape": list(cast(Any, m).weight.shape)}
        rows.append(row)
        if name not in in_shapes:
            row["skipped"] = "not used in the forward pass"
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.groups != 1:
                row["skipped"] = "grouped/depthwise conv"
                continue
            if math.prod(m.kernel_size) == 1:
                row["skipped"] = "1x1 conv"
                continue
            if cfg.conv_mode == "spatial" and (not isinstance(m, nn.Conv2d) or 1 in m.kernel_size
                                               or m.dilation != (1, 1) or m.padding_mode != "zeros"):
                row["skipped"] = "spatial mode needs a k x k Conv2d (no dilation, zero padding)"
                continue
        ranks = _ranks_for(cfg, m)
        row.update(ranks)
        if isinstance(m, nn.Linear):
            new, edit = svd_linear(m, ranks["rank"]), ("lowrank_linear", {"rank": ranks["rank"]})
        elif cfg.conv_mode == "spatial":
            new, edit = spatial_conv(m, ranks["rank"]), ("lowrank_conv_spatial", {"rank": ranks["rank"]})  # type: ignore[arg-type]
        else:
            new = tucker2_conv(m, ranks["r_in"], ranks["r_out"])  # type: ignore[arg-type]
            edit = ("lowrank_conv_tucker2", {"r_in": ranks["r_in"], "r_out": ranks["r_out"]})
        before, after = count_macs(m, in_shapes[name]), count_macs(new, in_shapes[name])
        row.update(macs_before=before, macs_after=after)
        if after * cfg.min_mac_reduction >= before:
            row["skipped"] = f"would not lower MACs enough ({after:,} vs {before:,})"
            continue
        new.train(m.training)
        set_module(model, name, new)
        spec = add_edit(spec, edit[0], module=name, **edit[1])
    return spec, rows


@register("lowrank", LowRank)
def lowrank(model: nn.Module | None, task: Task, cfg: LowRank, ctx: RunContext) -> PassResult:
    """Low-rank factorisation (SVD for Linear, Tucker-2 or k x 1 / 1 x k for Conv), then fine-tuning."""
    assert model is not None
    macs0 = count_macs(model, task.input_shape)
    spec, rows = factorise(model, ctx.spec, task.input_shape, cfg)
    done = [r for r in rows if "skipped" not in r]
    if not done:
        raise EdgeslimError(
            "low-rank: no layer was factorised (" + "; ".join(f"{r['layer']}: {r['skipped']}" for r in rows)
            + "); lower 'energy' or raise 'compression'"
        )
    macs1 = count_macs(model, task.input_shape)
    from edgeslim.train import evaluate

    acc_before_ft = evaluate(model, task.x_val, task.y_val)
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="lowrank")
    notes = {
        "layers": rows, "macs_before": macs0, "macs_after": macs1, "mac_reduction": round(macs0 / max(1, macs1), 3),
        "val_accuracy_before_finetune": acc_before_ft, "val_accuracy": hist["val_accuracy"],
    }
    return PassResult(model, spec=spec, notes=notes)
