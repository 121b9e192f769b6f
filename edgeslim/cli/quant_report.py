"""`edgeslim quant-report`: the per-layer quantization table (bits, scale range, SQNR vs float) of every
quantized stage of a run, read from the stage notes the quantization passes wrote."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeslim.cli import app, console
from edgeslim.errors import EdgeslimError


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


@app.command("quant-report")
def quant_report(
    run: Path = typer.Argument(..., help="a run folder (edgeslim run --out) or one of its stage folders"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Per-layer bits, weight-scale range, input scale and output SQNR (dB) of each quantized stage."""
    from rich.table import Table

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
    if as_json:
        typer.echo(json.dumps({k: {"format": v.get("format"), "layers": v["layers"]} for k, v in found.items()},
                              indent=2))
        return
    for name, notes in found.items():
        t = Table(title=f"{name}: {notes.get('format', '')}" + ("  (simulated)" if notes.get("simulated") else ""))
        for col in ("layer", "bits", "scale min", "scale max", "input scale", "SQNR dB"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for r in notes["layers"]:
            t.add_row(str(r["layer"]), str(r["bits"]),
                      _fmt(r.get("weight_scale_min", r.get("side_min")), ".3g"),
                      _fmt(r.get("weight_scale_max", r.get("side_max")), ".3g"),
                      _fmt(r.get("input_scale"), ".3g"), _fmt(r.get("sqnr_db"), ".1f"))
        console.print(t)
        if notes.get("why"):
            console.print(f"format choice: {notes['why']}")
