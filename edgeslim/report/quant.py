"""The per-layer quantization reports a run's stages hold (in their metrics' notes), for `quant-report`."""

from __future__ import annotations

import json
from pathlib import Path

from edgeslim.errors import EdgeslimError


def quantized_stages(run: Path) -> dict[str, dict]:
    """{stage folder: its notes} for every stage of `run` (a run folder or one stage folder) whose notes
    hold a per-layer report (`layers`: bits, weight-scale range, input scale, output SQNR in dB)."""
    folders = [run] if (run / "metrics.json").exists() else sorted((run / "stages").glob("[0-9][0-9]_*"))
    if not folders:
        raise EdgeslimError(f"{run}: not a run or stage folder (no metrics.json, no stages/)")
    found: dict[str, dict] = {}
    for f in folders:
        try:
            notes = json.loads((f / "metrics.json").read_text()).get("notes", {})
        except (OSError, json.JSONDecodeError):
            continue
        if notes.get("layers"):
            found[f.name] = notes
    if not found:
        raise EdgeslimError(f"{run}: no quantized stage with a per-layer report (quantize_int8, qat, lowbit, "
                            "mixed_precision write one)")
    return found
