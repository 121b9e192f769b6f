"""Output fidelity: how far an optimised model's outputs are from the original's on the same feeds.

Per output: max and mean absolute error (output units), cosine similarity of the flattened outputs over
all feeds, and for classifier-shaped outputs ([N, C] scores, or rank-3 per-position scores) top-1
agreement (fraction 0-1, per position for rank 3). Outputs whose reference values all lie in [0, 1]
(sigmoid/softmax probabilities) also give `prob_max_abs`, their max absolute error in probability; those
with one score per sample (a single sigmoid: [N], [N, 1], ...) give `threshold_agreement`, the fraction of
samples on the same side of the decision threshold (0.5) as the original. Dense maps (detection or
segmentation outputs with two spatial axes both >= `MAP_MIN_SIDE`: rank >= 4 [N, C, H, W] / [N, H, W, C], or a
rank-3 [N, H, W] probability map, e.g. a text detector's [N, 1, H, W] probability map; never a CRNN's
per-time-step scores [N, T, C] or a recurrent state [layers, N, H]: `_dense_map`) give `map_iou`: the intersection over union of the thresholded maps (pixels above the
threshold, pooled over every feed and channel; 1.0 when neither map has any). The threshold (`map_threshold`,
recorded) is 0.5 for probability-range maps (every reference value in [0, 1]), 0 for signed maps (logits,
where sigmoid crosses 0.5), else half the reference map's maximum. The summary is the worst over outputs,
because a model is only as good as its worst output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# score outputs (top-1 agreement here); the validation score takes the lower of their cosine and top-1 agreement
from edgeslim.onnxkit.scoring import classifier_like as _classifier_like
from edgeslim.onnxkit.session import run_all  # noqa: F401  (re-exported: outputs of a session per feed)

DECISION_THRESHOLD = 0.5  # single-score (sigmoid) outputs: the decision a user takes from the score
MAP_MIN_SIDE = 8  # a dense map's last two axes (H, W) are both at least this


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet. Unset fields are not checked."""

    min_cosine: float | None = 0.995
    max_abs: float | None = None
    min_top1: float | None = None
    max_prob_abs: float | None = 0.05   # probability outputs (sigmoid/softmax): max abs error, in probability
    min_agreement: float | None = 0.98  # single-score outputs: fraction on the same side of `threshold`
    threshold: float = DECISION_THRESHOLD

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
        if self.max_prob_abs is not None and f.prob_max_abs is not None and f.prob_max_abs > self.max_prob_abs:
            return f"probability max abs err {f.prob_max_abs:.3g} > {self.max_prob_abs:g}"
        if self.min_agreement is not None and f.agreement is not None and f.agreement < self.min_agreement:
            return f"agreement at threshold {self.threshold:g} {f.agreement:.3f} < {self.min_agreement:g}"
        return None

    def show(self, f: Fidelity) -> str:
        """The checks this tolerance makes on `f`, with the figures, e.g. for the pick line."""
        parts = [f"cosine {f.cosine:.5f}" + (f" >= {self.min_cosine:g}" if self.min_cosine is not None else "")]
        if self.max_abs is not None:
            parts.append(f"max abs err {f.max_abs:.3g} <= {self.max_abs:g}")
        parts.append("probability max abs err " + ("-: no probability output" if f.prob_max_abs is None else
                     f"{f.prob_max_abs:.3g}" + (f" <= {self.max_prob_abs:g}" if self.max_prob_abs is not None else "")))
        parts.append(f"agreement at threshold {self.threshold:g} " + ("-: no single-score output" if f.agreement is None
                     else f"{f.agreement:.3f}" + (f" >= {self.min_agreement:g}" if self.min_agreement is not None
                                                  else "")))
        if self.min_top1 is not None and f.top1 is not None:
            parts.append(f"top-1 agreement {f.top1:.3f} >= {self.min_top1:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Fidelity:
    max_abs: float
    mean_abs: float
    cosine: float
    top1: float | None  # None when no output looks like a classifier
    finite: bool
    per_output: dict[str, dict[str, float]]
    prob_max_abs: float | None = None  # worst max abs err over probability outputs; None: none
    agreement: float | None = None     # worst decision agreement over single-score outputs; None: none
    samples: int = 0                   # feeds compared
    iou: float | None = None           # worst thresholded-map IoU over dense map outputs; None: none

    def as_dict(self) -> dict:
        return {"max_abs_err": self.max_abs, "mean_abs_err": self.mean_abs, "cosine": self.cosine,
                "top1_agreement": self.top1, "prob_max_abs_err": self.prob_max_abs,
                "threshold_agreement": self.agreement, "map_iou": self.iou, "samples_compared": self.samples,
                "per_output": self.per_output}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def map_threshold(ref: np.ndarray) -> float:
    """The threshold of a dense map (module docstring): 0.5 for probabilities, 0 for signed maps (logits), else
    half the reference's maximum (a non-negative heat map)."""
    r = np.asarray(ref, np.float64)
    r = r[np.isfinite(r)]
    if not r.size or (r.min() >= 0 and r.max() <= 1):
        return DECISION_THRESHOLD
    return 0.0 if r.min() < 0 else 0.5 * float(r.max())


def map_iou(ref: np.ndarray, got: np.ndarray, threshold: float) -> float:
    """Intersection over union (0-1) of the pixels above `threshold` in `ref` and `got` (same shape); 1.0 when
    neither has any."""
    a, b = np.asarray(ref) > threshold, np.asarray(got) > threshold
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _dense_map(r: np.ndarray) -> bool:
    """A detection/segmentation map (module docstring), judged on an output's first reference feed `r`: float and
    - rank 4 or more, [N, C, H, W] (or [N, C, T, H, W]) with H, W both >= `MAP_MIN_SIDE`, or rank 4
      [N, H, W, C] with H, W >= `MAP_MIN_SIDE` (the IoU pools channels, so the layout only decides whether there
      are two spatial axes);
    - rank 3 [N, H, W] only as a probability map: H, W >= `MAP_MIN_SIDE`, every value in [0, 1], and not
      per-position class scores (`_classifier_like`: softmax rows, or a last axis of >= 1000 classes).
    Not a map: a CRNN's per-time-step scores [N, T, C] (logits are signed, probabilities are softmax rows), a
    recurrent state [layers, N, H] (signed), anything of rank <= 2."""
    if r.dtype.kind != "f" or r.ndim < 3 or not r.size:
        return False
    if r.ndim >= 5 or (r.ndim == 4 and min(r.shape[-2:]) >= MAP_MIN_SIDE):
        return min(r.shape[-2:]) >= MAP_MIN_SIDE
    if r.ndim == 4:
        return min(r.shape[1:3]) >= MAP_MIN_SIDE
    if min(r.shape[-2:]) < MAP_MIN_SIDE:
        return False
    v = r[np.isfinite(r)]
    return bool(v.size and v.min() >= 0 and v.max() <= 1) and not _classifier_like(r)


class _Acc:
    """One output's running figures over feeds (`compare_outputs`), in float64; a dense map's threshold is
    set by the first feed's reference (`map_threshold`)."""

    def __init__(self, classifier: bool, dense: bool = False) -> None:
        self.n = self.count = 0
        self.max_abs = self.sum_abs = self.dot = self.na = self.nb = 0.0
        self.finite = self.prob = self.per_sample = True
        self.classifier, self.top1_same, self.top1_n = classifier, 0, 0
        self.agree_same = 0
        self.map_t: float | None = None  # a dense map: its threshold (from the first feed), pixels above it
        self.map_inter = self.map_union = 0
        self.dense = dense  # a dense map (`_dense_map` of the first feed's reference)

    def add(self, r: np.ndarray, g: np.ndarray, name: str) -> None:
        a, b = np.asarray(r, np.float64).ravel(), np.asarray(g, np.float64).ravel()
        if a.shape != b.shape:
            raise AssertionError(f"output '{name}' changed size: {a.shape} vs {b.shape}")
        fa, fb = np.isfinite(a), np.isfinite(b)
        ok = fa & fb
        self.finite &= bool(np.array_equal(fa, fb))
        a_ok, b_ok = a[ok], b[ok]
        if a_ok.size:
            d = np.abs(a_ok - b_ok)
            self.max_abs, self.sum_abs = max(self.max_abs, float(d.max())), self.sum_abs + float(d.sum())
            self.dot += float(a_ok @ b_ok)
            self.na += float(a_ok @ a_ok)
            self.nb += float(b_ok @ b_ok)
        self.count += int(a_ok.size)
        self.n += int(a.size)
        self.prob &= bool(np.all((a_ok >= 0) & (a_ok <= 1)))
        rr = np.asarray(r)
        self.per_sample &= rr.size == max(1, rr.shape[0] if rr.ndim else 1)
        self.agree_same += int(((a >= DECISION_THRESHOLD) == (b >= DECISION_THRESHOLD)).sum())
        if self.dense and a.size:
            if self.map_t is None:
                self.map_t = map_threshold(a)
            above_a, above_b = a > self.map_t, b > self.map_t
            self.map_inter += int(np.count_nonzero(above_a & above_b))
            self.map_union += int(np.count_nonzero(above_a | above_b))
        if self.classifier:
            ra, ga = rr.argmax(-1), np.asarray(g).argmax(-1)
            self.top1_same += int((ra == ga).sum())
            self.top1_n += int(np.size(ra))

    def row(self, is_float: bool) -> dict[str, float]:
        na, nb = np.sqrt(self.na), np.sqrt(self.nb)
        cos = 1.0 if na == 0.0 and nb == 0.0 else (0.0 if na == 0.0 or nb == 0.0 else float(self.dot / (na * nb)))
        out = {"max_abs_err": self.max_abs, "mean_abs_err": self.sum_abs / self.count if self.count else 0.0,
               "cosine": cos}
        if is_float and self.n and self.prob:  # probabilities
            out["prob_max_abs_err"] = out["max_abs_err"]
            if self.per_sample:  # one score per sample: the decision at the threshold
                out["threshold_agreement"] = self.agree_same / self.n
        if self.classifier:
            out["top1_agreement"] = self.top1_same / self.top1_n if self.top1_n else 0.0
        if self.map_t is not None:  # IoU of the thresholded maps, pooled over every feed
            out["map_threshold"] = self.map_t
            out["map_iou"] = 1.0 if self.map_union == 0 else self.map_inter / self.map_union
        return out


def compare_outputs(names: list[str], ref: Iterable[Sequence[np.ndarray]], got: Iterable[Sequence[np.ndarray]]) -> Fidelity:
    """Compare outputs (`ref` original, `got` candidate), feed by feed, output by output. Both may be lazy
    (an `onnxkit.lazy.Spill`, a generator of session outputs): the figures are accumulated one feed at a time,
    so memory is one feed's outputs whatever the number of feeds."""
    accs: list[_Acc] = []
    is_float: list[bool] = []
    samples = 0
    for r, g in zip(ref, got):
        if not accs:
            accs = [_Acc(_classifier_like(np.asarray(r[k])), _dense_map(np.asarray(r[k]))) for k in range(len(names))]
            is_float = [np.asarray(r[k]).dtype.kind == "f" for k in range(len(names))]
        for k, name in enumerate(names):
            accs[k].add(r[k], g[k], name)
        samples += 1
    per = {name: accs[k].row(is_float[k]) for k, name in enumerate(names)} if accs else {
        name: {"max_abs_err": 0.0, "mean_abs_err": 0.0, "cosine": 1.0} for name in names}
    finite = all(a.finite for a in accs)
    top1 = [v["top1_agreement"] for v in per.values() if "top1_agreement" in v]
    prob = [v["prob_max_abs_err"] for v in per.values() if "prob_max_abs_err" in v]
    agree = [v["threshold_agreement"] for v in per.values() if "threshold_agreement" in v]
    ious = [v["map_iou"] for v in per.values() if "map_iou" in v]
    return Fidelity(
        max_abs=max(v["max_abs_err"] for v in per.values()),
        mean_abs=max(v["mean_abs_err"] for v in per.values()),
        cosine=min(v["cosine"] for v in per.values()),
        top1=min(top1) if top1 else None, finite=finite, per_output=per,
        prob_max_abs=max(prob) if prob else None, agreement=min(agree) if agree else None, samples=samples,
        iou=min(ious) if ious else None,
    )
