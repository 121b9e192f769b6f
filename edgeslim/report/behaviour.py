"""What compression changed in behaviour, per stage against the baseline, on the test split.

Accuracy can stay put while decisions move: a compressed model may get different samples right and
wrong, favour some classes, or become over- or under-confident; in medical or safety uses that matters
more than the headline number. From each stage's saved outputs (`measure.predictions`) this adds to the
stage's results.json entry:

- `per_class_accuracy` (fraction 0-1 per class) and `per_class_accuracy_delta` (stage - baseline);
- `flipped`: test samples whose predicted class differs from the baseline's, split into
  `flipped_to_wrong` (baseline right, stage wrong), `flipped_to_right` and `flipped_both_wrong`;
  `flipped_examples`: a few of them (index, label, both predictions and confidences);
- `ece`: expected calibration error with 15 equal-width confidence bins,
      ECE = sum_b (|B_b| / N) x |accuracy(B_b) - mean confidence(B_b)|,
  where confidence is the top softmax probability and B_b the samples whose confidence is in bin b
  ((0, 1/15], (1/15, 2/15], ...); 0 is perfectly calibrated. `ece_delta` is stage - baseline.

The inputs of the shown flipped examples are kept in `RUN/flipped_inputs.npz` for the report's figures.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeslim.fsutil import write_bytes

PREDICTIONS = "predictions.npz"  # a stage's test outputs, written by `measure.predictions`
ECE_BINS = 15
EXAMPLES = 6  # flipped examples kept per stage
FLIPPED_INPUTS = "flipped_inputs.npz"


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax; outputs that are already probabilities (rows >= 0 summing to 1) are kept."""
    z = np.asarray(z, np.float64)
    if (z >= 0).all() and np.allclose(z.sum(1), 1.0, atol=1e-4):
        return z
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error (fraction 0-1) with `bins` equal-width bins over the top probability."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy per true class (None for a class absent from the test split)."""
    out: list[float | None] = []
    for c in range(num_classes):
        m = labels == c
        out.append(float((pred[m] == c).mean()) if m.any() else None)
    return out


def compare_behaviour(base: tuple[np.ndarray, np.ndarray], stage: tuple[np.ndarray, np.ndarray],
            examples: int = EXAMPLES) -> dict:
    """The fields of the module docstring for one stage's (logits, labels) against the baseline's."""
    zb, y = base
    zs, ys = stage
    if zb.shape != zs.shape or not np.array_equal(y, ys):
        return {"behaviour_note": "predictions not comparable with the baseline's (other test split or classes)"}
    pb_all, ps_all = softmax(zb), softmax(zs)
    pb, ps = pb_all.argmax(1), ps_all.argmax(1)
    n = zb.shape[1]
    acc_b, acc_s = per_class_accuracy(pb, y, n), per_class_accuracy(ps, y, n)
    flipped = np.flatnonzero(pb != ps)
    # most confident flips first: the ones a user would least expect
    order = flipped[np.argsort(-ps_all[flipped, ps[flipped]], kind="stable")][:examples]
    return {
        "per_class_accuracy": [None if a is None else round(a, 6) for a in acc_s],
        "per_class_accuracy_delta": [None if a is None or b is None else round(a - b, 6) for a, b in zip(acc_s, acc_b)],
        "flipped": int(len(flipped)),
        "flipped_fraction": round(len(flipped) / len(y), 6) if len(y) else 0.0,
        "flipped_to_wrong": int(((pb == y) & (ps != y)).sum()),
        "flipped_to_right": int(((pb != y) & (ps == y)).sum()),
        "flipped_both_wrong": int(((pb != y) & (ps != y) & (pb != ps)).sum()),
        "flipped_examples": [{"index": int(i), "label": int(y[i]), "baseline": int(pb[i]), "stage": int(ps[i]),
                              "baseline_confidence": round(float(pb_all[i, pb[i]]), 4),
                              "stage_confidence": round(float(ps_all[i, ps[i]]), 4)} for i in order],
        "ece": round(ece(ps_all, y), 6),
        "ece_baseline": round(ece(pb_all, y), 6),
    }


def add_behaviour(run_dir: Path, stages: list[dict], x_test: np.ndarray | None = None) -> None:
    """Add the behaviour fields to every stage that has saved predictions (baseline included: its
    flips are 0 and deltas 0); keep the flipped examples' inputs for the report when `x_test` is given."""
    folders = _stage_folders(run_dir, stages)
    loaded = [load_predictions(f / PREDICTIONS) if f else None for f in folders]
    base = loaded[0] if loaded else None
    shown: set[int] = set()
    for s, folder, got in zip(stages, folders, loaded):
        if got is None or base is None:
            continue
        s["predictions"] = str((folder / PREDICTIONS).relative_to(run_dir))  # type: ignore[operator]
        fields = compare_behaviour(base, got)
        if "ece" in fields:
            fields["ece_delta"] = round(fields["ece"] - fields["ece_baseline"], 6)
            shown.update(e["index"] for e in fields["flipped_examples"])
        s.update(fields)
    if x_test is not None and shown:
        idx = np.array(sorted(shown))
        buf = io.BytesIO()
        np.savez_compressed(buf, index=idx, x=np.asarray(x_test)[idx].astype(np.float32))
        write_bytes(run_dir / FLIPPED_INPUTS, buf.getvalue())


def load_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, labels) of a stage, or None when it has none (not a classifier, or a run folder from
    before predictions were kept)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as d:
        return d["logits"], d["labels"]


def load_flipped_inputs(run_dir: Path) -> dict[int, np.ndarray]:
    p = run_dir / FLIPPED_INPUTS
    if not p.is_file():
        return {}
    with np.load(p, allow_pickle=False) as d:
        return {int(i): x for i, x in zip(d["index"], d["x"])}


def _stage_folders(run_dir: Path, stages: list[dict]) -> list[Path | None]:
    """Each stage's folder, from its `onnx` path (relative to the run folder)."""
    out: list[Path | None] = []
    for s in stages:
        rel = s.get("onnx")
        out.append((run_dir / rel).parent if rel else None)
    return out


def summary_lines(stages: list[dict]) -> list[str]:
    """Markdown lines: per stage, flips, calibration and the largest per-class change."""
    base = stages[0] if stages else {}
    if "ece" not in base:
        return []
    lines = [f"Baseline expected calibration error (ECE, 15 bins): {100 * base['ece']:.2f}%.", ""]
    lines += ["| stage | flipped vs baseline | to wrong / to right / both wrong | ECE | largest per-class change |",
              "|---|---|---|---|---|"]
    for s in stages[1:]:
        if "ece" not in s:
            lines.append(f"| {s['name']} | - | - | - | - |")
            continue
        deltas = [(abs(d), i, d) for i, d in enumerate(s.get("per_class_accuracy_delta") or []) if d is not None]
        worst = max(deltas) if deltas else None
        wtxt = f"class {worst[1]}: {100 * worst[2]:+.1f} points" if worst and worst[0] > 0 else "none"
        lines.append(f"| {s['name']} | {s['flipped']} ({100 * s['flipped_fraction']:.1f}%) | {s['flipped_to_wrong']} / "
                     f"{s['flipped_to_right']} / {s['flipped_both_wrong']} | {100 * s['ece_baseline']:.2f}% -> "
                     f"{100 * s['ece']:.2f}% | {wtxt} |")
    return lines
