"""Fidelity of sentence embeddings to a reference encoder's (numpy only).

- `cosine`: mean over sentences of cos(e_i, r_i) between a stage's embedding and the original's.
- `nn_agreement`: share of sentences whose nearest neighbour in the set (by cosine, itself excluded)
  is the same sentence under both encoders: what a retrieval user sees change.
- `paraphrase_recall`: share of sentences in a paraphrase group whose nearest neighbour is in their
  group (a quality figure of each encoder on its own, not a comparison).
All are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def mean_cosine(emb: np.ndarray, ref: np.ndarray) -> float:
    """Mean cosine similarity of row i of `emb` to row i of `ref` (shapes (N, D), same N)."""
    if emb.shape[0] != ref.shape[0]:
        raise ValueError(f"embedding counts differ: {emb.shape[0]} vs {ref.shape[0]}")
    return float((_unit(emb) * _unit(ref)).sum(1).mean())


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row (ties: the lowest index)."""
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def nn_agreement(emb: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows whose nearest neighbour under `emb` equals that under `ref` (needs >= 2 rows)."""
    if len(ref) < 2:
        return 1.0
    return float((nearest_neighbours(emb) == nearest_neighbours(ref)).mean())


def paraphrase_recall(emb: np.ndarray, groups: list[str | None]) -> float | None:
    """Share of grouped rows whose nearest neighbour shares their group; None without any group of >= 2."""
    g = np.array([x if x is not None else "" for x in groups], dtype=object)
    sizes = {k: int((g == k).sum()) for k in set(g) if k}
    rows = [i for i, k in enumerate(g) if k and sizes[k] >= 2]
    if not rows:
        return None
    nn = nearest_neighbours(emb)
    return float(np.mean([g[nn[i]] == g[i] for i in rows]))


def fidelity(emb: np.ndarray, ref: np.ndarray, groups: list[str | None]) -> dict:
    """The fidelity fields a text-encoder stage records (rounded to 6 digits)."""
    pr = paraphrase_recall(emb, groups)
    return {
        "cosine": round(mean_cosine(emb, ref), 6),
        "cosine_min": round(float((_unit(emb) * _unit(ref)).sum(1).min()), 6),
        "nn_agreement": round(nn_agreement(emb, ref), 6),
        "paraphrase_recall": None if pr is None else round(pr, 6),
    }
