"""`lowrank`: low-rank factorisation of Linear and Conv layers (`models.lowrank`: SVD for Linear, Tucker-2 or
k x 1 / 1 x k for Conv), then fine-tuning.

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
from edgeslim.models.counts import count_macs
from edgeslim.models.lowrank import energy_rank, mode_svd, retained, spatial_conv, svd_linear, tucker2_conv
from edgeslim.models.probe import probe
from edgeslim.models.spec import add_edit, get_module, set_module
from edgeslim.passes.base import ZOO_ONLY, PassConfig, PassResult, RunContext, register
from edgeslim.train import TrainConfig, evaluate


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
    _, s_out = mode_svd(w, 0)
    _, s_in = mode_svd(w, 1)
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


@register("lowrank", LowRank, kinds=ZOO_ONLY)
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
    acc_before_ft = evaluate(model, task.x_val, task.y_val)
    hist = ctx.finetune_model(model, task, cfg.finetune, desc="lowrank")
    notes = {
        "layers": rows, "macs_before": macs0, "macs_after": macs1, "mac_reduction": round(macs0 / max(1, macs1), 3),
        "val_accuracy_before_finetune": acc_before_ft, "val_accuracy": hist["val_accuracy"],
    }
    return PassResult(model, spec=spec, notes=notes)
