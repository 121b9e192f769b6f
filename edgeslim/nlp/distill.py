"""Embedding distillation: a compressed student learns the original encoder's sentence embeddings.

The loss is 1 - cos(student, teacher) per sentence (`cosine`) or the squared distance between the
(normalised) embeddings (`mse`), plus `token_weight` x a hidden-state term: for every student layer,
the squared error of its output to the output of the teacher layer it came from (after layer dropping,
`meta["layer_ids"]` maps them), relative to the teacher's (sum over real tokens of |s - t|^2 / |t|^2),
averaged over layers. Per-layer targets give a pruned layer far more signal per sentence than the pooled
embedding alone, which matters with a few hundred sentences. Dropout stays off: the student should
reproduce the teacher, not generalise past it. Sentences are the task's calibration split plus transfer
sentences (recombined from it, and any unlabelled sentences the user gives), never the evaluation split.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgeslim import accelerator
from edgeslim.nlp.config import DistillSettings
from edgeslim.nlp.encoder import SentenceEncoder, tokenize

Precision = Literal["fp32", "bf16", "auto"]


def use_bf16(precision: Precision) -> bool:
    """bf16 autocast for the training matmuls: asked for, or `auto` on a CPU with native bf16 (AMX or
    AVX-512 BF16), where it is several times cheaper; elsewhere it would be emulated and slower."""
    if precision == "auto":
        cpu = getattr(torch, "cpu", None)
        return bool(cpu and (getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                             or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()))
    return precision == "bf16"


def _rel_sq(s: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """sum over real tokens of |s - t|^2 / sum of |t|^2 ((B, T, D) states, (B, T, 1) mask)."""
    return (((s - t) ** 2) * m).sum() / ((t**2) * m).sum().clamp(min=1e-12)


def distill_encoder(student: SentenceEncoder, teacher: SentenceEncoder, texts: list[str], cfg: DistillSettings, *,
            seed: int = 0, quiet: bool = False, desc: str = "distill") -> dict:
    """Train `student` in place with `cfg`'s settings (`DistillSettings`: distill_epochs, distill_lr,
    distill_batch_size, loss, token_weight, precision) on the job's accelerator (`edgeslim.accelerator`; both
    encoders are back on the CPU afterwards); returns the loss per epoch and the sentence count."""
    epochs, lr, batch_size = cfg.distill_epochs, cfg.distill_lr, cfg.distill_batch_size
    loss, token_weight, precision = cfg.loss, cfg.token_weight, cfg.precision
    if epochs <= 0 or not texts:
        return {"epochs": 0}
    dev = accelerator.current()
    with accelerator.on_device(student, dev), accelerator.on_device(teacher, dev):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        teacher.eval()
        student.eval()  # dropout off; gradients still flow
        n_layers = len(getattr(student.backbone.encoder, "layer", []))
        layer_map = list(student.meta.get("layer_ids") or range(n_layers))
        params = [p for p in student.backbone.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
        bf16 = use_bf16(precision)
        amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        hist = []
        for ep in range(epochs):
            order = rng.permutation(len(texts))
            total, n = 0.0, 0
            for s in range(0, len(texts), batch_size):
                chunk = [texts[i] for i in order[s : s + batch_size]]
                feed = {k: torch.from_numpy(v).to(dev) for k, v in tokenize(student, chunk).items()}
                mask = feed["attention_mask"]
                m = mask.unsqueeze(-1).float()
                with torch.no_grad(), amp():
                    t_hid = teacher.backbone(**feed, output_hidden_states=True).hidden_states
                t_hid = [h.float() for h in t_hid]
                with amp():
                    s_hid = student.backbone(**feed, output_hidden_states=True).hidden_states
                s_hid = [h.float() for h in s_hid]
                s_emb, t_emb = student.pool(s_hid[-1], mask), teacher.pool(t_hid[-1], mask)
                if loss == "cosine":
                    lval = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
                else:
                    lval = ((s_emb - t_emb) ** 2).sum(-1).mean()
                if token_weight > 0 and n_layers:
                    per_layer = [_rel_sq(s_hid[j + 1], t_hid[layer_map[j] + 1], m) for j in range(n_layers)]
                    lval = lval + token_weight * torch.stack(per_layer).mean()
                opt.zero_grad()
                lval.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                total += float(lval.detach()) * len(chunk)
                n += len(chunk)
            hist.append(round(total / n, 6))
            if not quiet:
                print(f"  {desc} epoch {ep + 1}/{epochs}: loss {hist[-1]:.5f}", file=sys.stdout, flush=True)
        return {"epochs": epochs, "loss": hist, "sentences": len(texts), "precision": "bf16" if bf16 else "fp32"}  # wall time: the stage's `seconds`
