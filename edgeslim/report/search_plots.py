"""Matplotlib figures for the search report, returned as PNG bytes (embedded, no files, no network)."""

from __future__ import annotations

from edgeslim.report.plotting import plt, png


def front_plot(summary: dict, key: str, label: str, scale: float = 1.0) -> bytes:
    """Accuracy (%) against one cost: every proxy trial (grey: infeasible, blue: feasible), the
    fully fine-tuned front (red, test split) and the baseline (black star)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for feasible, color, name in ((False, "#bbbbbb", "proxy, breaks budget"), (True, "#3b75af", "proxy, feasible")):
        pts = [(r["metrics"][key] * scale, 100 * r["metrics"]["accuracy"]) for r in summary["trials"]
               if r.get("metrics") and r["feasible"] == feasible]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=18, c=color, label=name)
    fr = sorted((f["metrics"][key] * scale, 100 * f["metrics"]["accuracy"]) for f in summary["front"])
    if fr:
        ax.plot(*zip(*fr), "o-", c="#c0392b", label="front, full fine-tune (test)")
    b = summary["baseline"]["test"]
    ax.scatter([b[key] * scale], [100 * b["accuracy"]], marker="*", s=160, c="k", label="baseline (test)")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def candidate_layers_plot(layers: list[dict]) -> bytes:
    """Per-layer kept channels (%) and zero fraction (%), with the weight bits written on each bar."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["layer"] for r in layers]
    kept = [100 * r["out_channels"] / (r["baseline_out_channels"] or r["out_channels"]) for r in layers]
    sparse = [100 * r["sparsity"] for r in layers]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], kept, 0.4, label="channels kept (%)", color="#3b75af")
    ax.bar([i + 0.2 for i in x], sparse, 0.4, label="zero weights (%)", color="#e67e22")
    for i, r in enumerate(layers):
        ax.text(i, 103, f"{r.get('weight_bits', '?')}b", ha="center", fontsize=8)
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 112)
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)
