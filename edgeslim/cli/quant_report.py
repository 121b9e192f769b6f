"""`edgeslim quant-report`: the per-layer quantization table (bits, scale range, SQNR vs float) of every
quantized stage of a run, read from the stage notes the quantization passes wrote."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


@app.command("quant-report")
def quant_report(
    run: Path = typer.Argument(..., help="a run folder (edgeslim run --out) or one of its stage folders"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Per-layer bits, weight-scale range, input scale and output SQNR (dB) of each quantized stage."""
    from rich.table import Table

    found = api.quant_report(run)
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
