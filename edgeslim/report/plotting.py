"""Matplotlib set up once for every report (headless Agg backend) and the plots both reports draw; a figure
is returned as PNG bytes (embedded in the page: no files, no network)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["energy_plot", "plt", "png"]


def png(fig: plt.Figure) -> bytes:
    """`fig` as PNG bytes (90 dpi), closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def energy_plot(rows: list[dict]) -> bytes:
    """Energy per layer (uJ, estimated), stacked: compute (MACs), memory (weights + activations moved)
    and static (active power while the layer runs)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["layer"] for r in rows]
    comp = [1e3 * r["compute_mj"] for r in rows]
    mem = [1e3 * r["memory_mj"] for r in rows]
    stat = [1e3 * r.get("static_mj", 0.0) for r in rows]
    ax.bar(names, comp, label="compute (MACs)", color="#27ae60")
    ax.bar(names, mem, bottom=comp, label="memory (weights + activations)", color="#8e44ad")
    ax.bar(names, stat, bottom=[c + m for c, m in zip(comp, mem)], label="static (power x time)", color="#95a5a6")
    ax.set_ylabel("energy per inference (uJ, estimated)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend(fontsize=7)
    return png(fig)
