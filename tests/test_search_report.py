"""The search report: self-contained HTML whose every plot decodes in headless Chromium; Markdown twin."""

from __future__ import annotations

import re
from pathlib import Path

from chromium_helpers import images_loaded, needs_chromium

from edgeslim.report.search_html import write_search_report


def _metrics(acc: float, flash: int, energy: float) -> dict:
    layers = [{"layer": n, "op": "Conv", "precision": "int8", "macs": 1000 * (i + 1), "compute_mj": energy * 0.1,
               "memory_mj": energy * 0.2, "static_mj": energy * 0.2} for i, n in enumerate(("conv1", "fc"))]
    return {"accuracy": acc, "flash_bytes": flash, "arena_bytes": 900, "latency_ms": 0.5 * energy * 100,
            "energy_mj": energy, "energy_method": "estimated:calibrated@cortex-m4 (LOO error 0.66x-1.78x)", "macs": 3000,
            "energy_layers": layers}


def _summary() -> dict:
    """A small but complete summary, shaped exactly as `search.final.finalize` writes it."""
    trials = []
    for i, (acc, flash, e, ok) in enumerate([(0.97, 9000, 0.02, True), (0.95, 6000, 0.01, True),
                                               (0.80, 5000, 0.005, False)]):
        trials.append({"number": i, "state": "COMPLETE", "feasible": ok, "metrics": _metrics(acc, flash, e),
                       "values": [100 * acc, e], "recipe": "version: 1\npasses:\n- quantize_int8: {}\n"})
    front = [{"trial": 0, "slot": 0, "recipe": "version: 1\npasses:\n- quantize_int8: {}\n",
              "metrics": _metrics(0.975, 8900, 0.02), "violations": {"flash": -0.5, "accuracy_drop": -0.01},
              "feasible": True, "values": [97.5, 0.02],
              "layers": [{"layer": "conv1", "out_channels": 4, "baseline_out_channels": 6, "sparsity": 0.1,
                          "weight_bits": 8}, {"layer": "fc", "out_channels": 10, "baseline_out_channels": 10,
                                              "sparsity": 0.0, "weight_bits": 8}]}]
    return {
        "config": {"model": "/m", "task": "digits", "objectives": ["accuracy", "energy"], "trials": 3,
                   "proxy_epochs": 2},
        "device": "cortex-m4", "budget": {"max_flash": 32768, "max_accuracy_drop": 1.0},
        "baseline": {"test": _metrics(0.98, 35000, 0.05), "val": _metrics(0.98, 35000, 0.05)},
        "counts": {"COMPLETE": 3, "PRUNED": 0, "FAIL": 0}, "feasible_trials": 2, "hypervolume": 1.0,
        "trials": trials, "front": front, "best": {"accuracy": {"trial": 0, "file": "best_accuracy.yaml"}},
    }


def test_report_is_self_contained_with_tables_and_recipes(tmp_path: Path) -> None:
    write_search_report(tmp_path, _summary())
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img ") == 5  # three front plots, per-layer structure, energy by layer
    assert "src=\"data:image/png;base64," in page and not re.search(r"(src|href)=\"https?:", page)
    assert "trial 0" in page and "quantize_int8" in page and "baseline" in page
    md = (tmp_path / "report.md").read_text()
    assert md.count("![") == 5 and all((tmp_path / "plots" / f).exists() for f in ("front_energy.png", "layers.png"))
    assert "| baseline | 98.00%" in md


@needs_chromium
def test_every_plot_renders_in_headless_chromium(tmp_path: Path) -> None:
    write_search_report(tmp_path, _summary())
    imgs, ok = images_loaded(tmp_path / "report.html", tmp_path, min_px=100)
    assert imgs == 5 and ok == 5  # every plot decoded with real pixel size
