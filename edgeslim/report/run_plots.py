"""Matplotlib figures for a run's report, returned as PNG bytes: trade-offs with the stages as points,
per-class accuracy changes, flipped examples (images or signals) and the energy by stage."""

from __future__ import annotations

import numpy as np

from edgeslim.report.plotting import plt, png

COLORS = ["#222222", "#3b75af", "#e67e22", "#27ae60", "#c0392b", "#8e44ad", "#16a085", "#7f8c8d"]


def tradeoff_plot(stages: list[dict], get, label: str) -> bytes:
    """Accuracy (%) against one cost (`get(stage)`), one labelled point per stage, joined in recipe order."""
    pts = [(get(s), 100 * s["accuracy"], s["name"]) for s in stages
           if s.get("accuracy") is not None and get(s) is not None]
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    if pts:
        xs, ys, names = zip(*pts)
        ax.plot(xs, ys, "-", c="#bbbbbb", zorder=1)
        for i, (x, y, n) in enumerate(pts):
            ax.scatter([x], [y], s=60 if i == 0 else 40, marker="*" if i == 0 else "o", c=COLORS[i % len(COLORS)],
                       zorder=2, label=n)
        ax.legend(fontsize=7)
        lo, hi = min(ys), max(ys)
        ax.set_ylim(lo - max(1.0, 0.2 * (hi - lo)), hi + max(0.5, 0.1 * (hi - lo)))
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    return png(fig)


def per_class_plot(stages: list[dict]) -> bytes:
    """Per-class accuracy change against the baseline (points), one bar group per class."""
    rows = [s for s in stages[1:] if s.get("per_class_accuracy_delta")]
    n = len(rows[0]["per_class_accuracy_delta"]) if rows else 0
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    width = 0.8 / max(1, len(rows))
    for k, s in enumerate(rows):
        d = [100 * (v or 0.0) for v in s["per_class_accuracy_delta"]]
        ax.bar(np.arange(n) + (k - (len(rows) - 1) / 2) * width, d, width, label=s["name"],
               color=COLORS[(k + 1) % len(COLORS)])
    ax.axhline(0, c="k", lw=0.8)
    ax.set_xticks(range(n))
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy change vs baseline (points)")
    ax.grid(alpha=0.3, axis="y")
    if rows:
        ax.legend(fontsize=7)
    return png(fig)


def flipped_plot(examples: list[dict], inputs: dict[int, np.ndarray], stage: str) -> bytes:
    """The flipped test samples of one stage: images (C,H,W) as pictures, sequences (C,L) as signals,
    titled with the true label and both predictions (and confidences)."""
    shown = [e for e in examples if e["index"] in inputs]
    k = max(1, len(shown))
    fig, axes = plt.subplots(1, k, figsize=(1.9 * k, 2.2), squeeze=False)
    for ax, e in zip(axes[0], shown):
        x = np.asarray(inputs[e["index"]])
        if x.ndim == 3:
            img = x[0] if x.shape[0] == 1 else np.transpose(x[:3], (1, 2, 0))
            img = (img - img.min()) / (np.ptp(img) or 1.0)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            for ch in np.atleast_2d(x):
                ax.plot(ch, lw=1)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
        ax.set_title(f"#{e['index']} true {e['label']}\nbase {e['baseline']} ({e['baseline_confidence']:.2f})\n"
                     f"{stage[:14]} {e['stage']} ({e['stage_confidence']:.2f})", fontsize=7)
    if not shown:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no flipped predictions", ha="center")
    return png(fig)


def energy_stages_plot(stages: list[dict]) -> bytes:
    """Estimated energy per inference on the verdict device, by stage: dynamic (ops + bytes moved) and
    static (active power x estimated time), stacked."""
    rows = [s for s in stages if s.get("device_verdict")]
    names = [s["name"] for s in rows]
    dyn = [s["device_verdict"]["dynamic_mj"] for s in rows]
    stat = [s["device_verdict"]["static_mj"] for s in rows]
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.bar(names, stat, color="#95a5a6", label="static: power x time")
    ax.bar(names, dyn, bottom=stat, color="#27ae60", label="dynamic: ops + bytes")
    dev = rows[0]["device_verdict"]["device"] if rows else "?"
    ax.set_ylabel(f"mJ per inference on {dev} (estimated)")
    ax.tick_params(axis="x", rotation=20, labelsize=8)
    ax.legend(fontsize=7)
    return png(fig)


def stage_layers_plot(layers: list[dict]) -> bytes:
    """Per layer: output channels kept vs the baseline (%), zero weights (%), weight bits written above;
    the figure widens with the number of layers."""
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.3 * n + 1.5), 3.2))
    x = np.arange(n)
    kept = [100 * (r.get("kept") or 1.0) for r in layers]
    ax.bar(x - 0.2, kept, 0.4, label="channels kept (%)", color="#3b75af")
    ax.bar(x + 0.2, [100 * r["sparsity"] for r in layers], 0.4, label="zero weights (%)", color="#e67e22")
    for i, r in enumerate(layers):
        ax.text(i, 103, f"{r['weight_bits']}b", ha="center", fontsize=6 if n > 12 else 8)
    ax.set_xticks(x, [r["layer"] for r in layers], rotation=60 if n > 12 else 30, ha="right",
                  fontsize=6 if n > 12 else 8)
    ax.set_ylim(0, 112)
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)
