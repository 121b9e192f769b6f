"""Early exits (dynamic, input-dependent pruning): split a backbone that runs its sub-modules in order into
segments at exit points and train a small classifier head (global average pool + linear) on each exit's
frozen features. The `early_exit` pass measures the resulting cascade."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError, choices
from edgeslim.models.counts import count_macs


def chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as a flat list of modules run in order (nested nn.Sequential expanded)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(path + ".", child)
            else:
                out.append((path, child))

    walk("", model)
    return out


def check_chain(model: nn.Module, links: list[tuple[str, nn.Module]], x: torch.Tensor) -> None:
    with torch.no_grad():
        ref, y = model.eval()(x), x
        for _, m in links:
            y = m(y)
    if y.shape != ref.shape or not torch.allclose(y, ref, atol=1e-5):
        raise EdgeslimError("early_exit needs a model whose forward runs its sub-modules in order (ResNet-8, "
                            "DS-CNN, MobileNetV1, LeNet-5, CNN1D); this model's forward does something else")


def make_head(feat: torch.Tensor, num_classes: int) -> nn.Module:
    """Global average pool (for feature maps) + a linear classifier."""
    if feat.dim() == 2:
        return nn.Linear(feat.shape[1], num_classes)
    pool = nn.AdaptiveAvgPool2d(1) if feat.dim() == 4 else nn.AdaptiveAvgPool1d(1)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(feat.shape[1], num_classes))


def default_exits(links: list[tuple[str, nn.Module]], macs: list[int], outs: list[torch.Tensor]) -> list[str]:
    """Two exit points nearest to 1/3 and 2/3 of the cumulative MACs, each after a whole block (a module
    holding convs) or after an activation, so heads see finished feature maps."""
    cum = np.cumsum(macs) / max(1, sum(macs))
    conv_seen = np.cumsum([any(isinstance(s, nn.modules.conv._ConvNd) for s in m.modules()) for _, m in links])

    def block_end(m: nn.Module) -> bool:
        inner = [s for s in m.modules() if s is not m]
        return any(isinstance(s, nn.modules.conv._ConvNd) for s in inner) or isinstance(
            m, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish))

    cands = [i for i in range(len(links) - 1)
             if conv_seen[i] and outs[i].dim() >= 3 and block_end(links[i][1]) and cum[i] < 0.9]
    if not cands:
        raise EdgeslimError("early_exit: found no intermediate conv block to attach an exit to; name `exits`")
    picks: list[int] = []
    for f in (1 / 3, 2 / 3):
        left = [i for i in cands if i not in picks]
        if left:
            picks.append(min(left, key=lambda i: abs(cum[i] - f)))
    return [links[i][0] for i in sorted(picks)]


def train_head(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr)
    head.train()
    for _ in range(steps):
        loss = F.cross_entropy(head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()


def build_exits(model: nn.Module, task: Task, exits: list[str] | None = None, head_epochs: int = 200,
                lr: float = 1e-2, seed: int = 0) -> dict:
    """Split the backbone at the exits, train one head per exit. Returns segments, heads and MACs."""
    links = chain(model)
    x0 = torch.from_numpy(task.x_val[:8])
    check_chain(model, links, x0)
    outs, macs, y = [], [], torch.zeros(1, *task.input_shape)
    with torch.no_grad():
        for _, m in links:
            macs.append(count_macs(m, tuple(y.shape[1:])))  # keeps m's eval mode (BN stats frozen)
            y = m(y)
            outs.append(y)
    names = [n for n, _ in links]
    exits = exits or default_exits(links, macs, outs)
    bad = [e for e in exits if e not in names[:-1]]
    if bad:
        raise EdgeslimError(f"early_exit: unknown exit points {bad}; valid: {choices(names[:-1])}")
    cut = sorted(names.index(e) for e in exits)
    bounds = [-1] + cut + [len(links) - 1]
    segments = [nn.Sequential(*[m for _, m in links[a + 1 : b + 1]]).eval() for a, b in zip(bounds, bounds[1:])]
    seg_macs = [int(sum(macs[a + 1 : b + 1])) for a, b in zip(bounds, bounds[1:])]
    heads, head_macs, shapes = [], [], []
    with torch.no_grad():
        f_tr, f_in = torch.from_numpy(task.x_train), torch.zeros(1, *task.input_shape)
        for k, seg in enumerate(segments[:-1]):
            shapes.append(tuple(f_in.shape[1:]))
            f_tr, f_in = seg(f_tr), seg(f_in)
            torch.manual_seed(seed + k)  # the head's initial weights too, not only its training order
            head = make_head(f_in, task.num_classes)
            with torch.enable_grad():
                pooled = head[:-1](f_tr) if isinstance(head, nn.Sequential) else f_tr
                lin = head[-1] if isinstance(head, nn.Sequential) else head
                train_head(lin, pooled.detach(), torch.from_numpy(task.y_train), head_epochs, lr, seed + k)
            heads.append(head.eval())
            head_macs.append(count_macs(head, tuple(f_in.shape[1:])))
        shapes.append(tuple(f_in.shape[1:]))
    return {"exits": [names[i] for i in cut], "segments": segments, "heads": heads, "seg_macs": seg_macs,
            "head_macs": head_macs, "shapes": shapes}
