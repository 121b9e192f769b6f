"""Importance of attention heads and FFN neurons, measured on calibration sentences.

Every head and FFN neuron gets a gate (a multiplier, 1.0) on its output: the input of
`attention.output.dense` (per head, head_dim columns) and of `output.dense` (per neuron).

- `activation`: the mean size of the unit's contribution to the residual stream over real tokens,
  ||W_out[:, unit] a_unit|| (per head the norm of its slice of attention.output.dense applied to its
  context vectors; per neuron |a_j| * ||W_out[:, j]||).
- `gradient`: a first-order (Taylor) estimate of how far the sentence embeddings move when the unit is
  removed: (d<e, r>/d gate)^2 summed over sentences with a random direction r per sentence, i.e. a
  Hutchinson estimate of ||d e / d gate||^2. No labels are needed, unlike a task-loss Taylor score, and
  unlike a distillation loss it is not zero at the unpruned model.
Scores are normalised per layer (sum 1) so heads and neurons of different layers can be ranked together.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from edgeslim.nlp.encoder import SentenceEncoder, tokenize
from edgeslim.nlp.surgery import bert_layers, head_dim

Unit = Literal["heads", "ffn"]
Method = Literal["gradient", "activation"]


def importance(enc: SentenceEncoder, texts: list[str], unit: Unit, method: Method, seed: int = 0,
               batch: int = 32) -> list[np.ndarray]:
    """One score array per layer (length = heads or FFN neurons of that layer), each summing to 1."""
    layers = bert_layers(enc.backbone)
    d = head_dim(enc.backbone)
    targets = [ly.attention.output.dense if unit == "heads" else ly.output.dense for ly in layers]
    sizes = [t.in_features // d if unit == "heads" else t.in_features for t in targets]
    gates = [torch.ones(n, requires_grad=(method == "gradient")) for n in sizes]
    scores = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    state: dict = {}

    def make_hook(i: int):
        def hook(mod: nn.Linear, args: tuple) -> tuple:
            x = args[0]  # (B, T, units * width)
            g = gates[i].repeat_interleave(d) if unit == "heads" else gates[i]
            if method == "activation":
                with torch.no_grad():
                    m = state["mask"].unsqueeze(-1).to(x.dtype)  # (B, T, 1)
                    if unit == "heads":  # per head: ||x_h W_h^T|| per token
                        xh = x.reshape(*x.shape[:2], sizes[i], d)
                        wh = mod.weight.reshape(mod.out_features, sizes[i], d)
                        contrib = torch.einsum("bthd,ohd->btho", xh, wh).norm(dim=-1)  # (B, T, heads)
                    else:
                        contrib = x.abs() * mod.weight.norm(dim=0)  # (B, T, neurons)
                    scores[i] += (contrib * m).sum((0, 1)).double()
            return (x * g,)
        return hook

    handles = [t.register_forward_pre_hook(make_hook(i)) for i, t in enumerate(targets)]
    rng = torch.Generator().manual_seed(seed)
    was = enc.training
    enc.eval()
    try:
        for s in range(0, len(texts), batch):
            feed = {k: torch.from_numpy(v) for k, v in tokenize(enc, texts[s : s + batch]).items()}
            state["mask"] = feed["attention_mask"]
            if method == "activation":
                with torch.no_grad():
                    enc(**feed)
                continue
            e = enc(**feed)  # (B, D)
            r = torch.randn(e.shape, generator=rng)
            grads = torch.autograd.grad((e * r).sum(), gates)
            for i, gr in enumerate(grads):
                scores[i] += gr.double() ** 2
    finally:
        for h in handles:
            h.remove()
        enc.train(was)
    return [(sc / sc.sum().clamp(min=1e-30)).numpy() for sc in scores]


def choose_keep(scores: list[np.ndarray], ratio: float, per_layer: bool, min_keep: int = 1,
                multiple: int = 1) -> list[list[int]]:
    """Indices to keep per layer after removing `ratio` of all units: the lowest scores go, either in
    every layer alike (`per_layer`) or ranked across layers; each layer keeps at least `min_keep`, and
    per-layer counts are rounded to a `multiple` (aligned widths suit GEMM kernels)."""
    total = sum(len(s) for s in scores)
    if per_layer:
        counts = [max(min_keep, len(s) - int(round(ratio * len(s)))) for s in scores]
    else:
        n_drop = int(round(ratio * total))
        flat = sorted((float(v), li, j) for li, s in enumerate(scores) for j, v in enumerate(s))
        counts = [len(s) for s in scores]
        for _v, li, _j in flat:
            if n_drop <= 0:
                break
            if counts[li] > min_keep:
                counts[li] -= 1
                n_drop -= 1
    if multiple > 1:
        counts = [min(len(s), max(min_keep, int(round(c / multiple)) * multiple)) for c, s in zip(counts, scores)]
    return [sorted(np.argsort(-s, kind="stable")[:c].tolist()) for s, c in zip(scores, counts)]
