"""Embedding distillation: a compressed student learns the original encoder's sentence embeddings.

The loss is 1 - cos(student, teacher) per sentence (`cosine`) or the squared distance between the
(normalised) embeddings (`mse`), plus optionally `token_weight` x the mean squared distance between
the last hidden states of real tokens (more signal per sentence; hidden sizes match since pruning
keeps the hidden width). Dropout stays off: the student should reproduce the teacher, not generalise
past it. Sentences are the task's calibration split plus transfer sentences (recombined from it, and
any unlabelled sentences the user gives), never the evaluation split.
"""

from __future__ import annotations

import sys
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgeslim.nlp.encoder import SentenceEncoder, tokenize


def distill(
    student: SentenceEncoder, teacher: SentenceEncoder, texts: list[str], *, epochs: int, lr: float,
    batch_size: int = 32, loss: Literal["cosine", "mse"] = "cosine", token_weight: float = 0.0, seed: int = 0,
    quiet: bool = False, desc: str = "distill",
) -> dict:
    """Train `student` in place; returns the loss per epoch and the seconds taken."""
    if epochs <= 0 or not texts:
        return {"epochs": 0}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.eval()  # dropout off; gradients still flow
    params = [p for p in student.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * max(0.0, 1 - s / steps))
    t0 = time.perf_counter()
    hist = []
    for ep in range(epochs):
        order = rng.permutation(len(texts))
        total, n = 0.0, 0
        for s in range(0, len(texts), batch_size):
            chunk = [texts[i] for i in order[s : s + batch_size]]
            feed = {k: torch.from_numpy(v) for k, v in tokenize(student, chunk).items()}
            mask = feed["attention_mask"]
            with torch.no_grad():
                t_tok = teacher.token_states(**feed)
                t_emb = teacher.pool(t_tok, mask)
            s_tok = student.token_states(**feed)
            s_emb = student.pool(s_tok, mask)
            if loss == "cosine":
                lval = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
            else:
                lval = ((s_emb - t_emb) ** 2).sum(-1).mean()
            if token_weight > 0:
                m = mask.unsqueeze(-1).to(s_tok.dtype)
                lval = lval + token_weight * (((s_tok - t_tok) ** 2) * m).sum() / (m.sum() * s_tok.shape[-1])
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
    return {"epochs": epochs, "loss": hist, "sentences": len(texts), "seconds": round(time.perf_counter() - t0, 1)}
