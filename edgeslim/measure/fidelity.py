"""Output fidelity: how far an optimised model's outputs are from the original's on the same feeds.

Per output: max and mean absolute error (output units), cosine similarity of the flattened outputs over
all feeds, and for classifier-shaped outputs ([N, C] scores, or rank-3 per-position scores) top-1
agreement (fraction 0-1, per position for rank 3). The
summary is the worst over outputs, because a model is only as good as its worst output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeslim.onnxkit.session import run_all  # noqa: F401  (re-exported: outputs of a session per feed)


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet. Unset fields are not checked."""

    min_cosine: float | None = 0.995
    max_abs: float | None = None
    min_top1: float | None = None

    def broken(self, f: Fidelity) -> str | None:
        """A short reason if `f` breaks this tolerance, else None."""
        if not f.finite:
            return "non-finite outputs"
        if self.min_cosine is not None and f.cosine < self.min_cosine:
            return f"cosine {f.cosine:.4f} < {self.min_cosine}"
        if self.max_abs is not None and f.max_abs > self.max_abs:
            return f"max abs err {f.max_abs:.3g} > {self.max_abs:g}"
        if self.min_top1 is not None and f.top1 is not None and f.top1 < self.min_top1:
            return f"top-1 agreement {f.top1:.3f} < {self.min_top1}"
        return None


@dataclass(frozen=True)
class Fidelity:
    max_abs: float
    mean_abs: float
    cosine: float
    top1: float | None  # None when no output looks like a classifier
    finite: bool
    per_output: dict[str, dict[str, float]]

    def as_dict(self) -> dict:
        return {"max_abs_err": self.max_abs, "mean_abs_err": self.mean_abs, "cosine": self.cosine,
                "top1_agreement": self.top1, "per_output": self.per_output}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _classifier_like(r: np.ndarray) -> bool:
    """[N, C] scores, or rank-3 per-position class scores (CTC text recognisers): softmax rows, or a last
    axis of at least 1000 classes (character sets; an RNN state or a detector's box rows are shorter)."""
    if r.dtype.kind != "f" or r.ndim not in (2, 3) or r.shape[-1] < 2 or r.size == 0:
        return False
    if r.ndim == 2 or r.shape[-1] >= 1000:
        return True
    return bool(r.min() >= 0 and np.allclose(r.sum(-1), 1.0, atol=1e-3))


def compare(names: list[str], ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> Fidelity:
    """Compare outputs (`ref` original, `got` candidate), feed by feed, output by output."""
    per: dict[str, dict[str, float]] = {}
    finite = True
    for k, name in enumerate(names):
        a = np.concatenate([np.asarray(r[k], np.float64).ravel() for r in ref])
        b = np.concatenate([np.asarray(g[k], np.float64).ravel() for g in got])
        if a.shape != b.shape:
            raise AssertionError(f"output '{name}' changed size: {a.shape} vs {b.shape}")
        ok = np.isfinite(a) & np.isfinite(b)
        finite &= bool(np.array_equal(np.isfinite(a), np.isfinite(b)))
        d = np.abs(a[ok] - b[ok])
        row = {"max_abs_err": float(d.max()) if d.size else 0.0, "mean_abs_err": float(d.mean()) if d.size else 0.0,
               "cosine": _cos(a[ok], b[ok])}
        r0 = np.asarray(ref[0][k])
        if _classifier_like(r0):
            ra = np.concatenate([np.asarray(r[k]).argmax(-1) for r in ref])
            ga = np.concatenate([np.asarray(g[k]).argmax(-1) for g in got])
            row["top1_agreement"] = float((ra == ga).mean())
        per[name] = row
    top1 = [v["top1_agreement"] for v in per.values() if "top1_agreement" in v]
    return Fidelity(
        max_abs=max(v["max_abs_err"] for v in per.values()),
        mean_abs=max(v["mean_abs_err"] for v in per.values()),
        cosine=min(v["cosine"] for v in per.values()),
        top1=min(top1) if top1 else None, finite=finite, per_output=per,
    )
