"""`edgeslim sensitivity`: per-layer pruning sensitivity of a trained model (table + plot), and optionally
the per-layer ratios that reach a global target."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console
from edgeslim.errors import EdgeslimError


@app.command()
def sensitivity(
    model: Path = typer.Option(..., "--model", "-m", help="trained model folder"),
    task: str = typer.Option(..., "--task", "-t", help="built-in task name or path to data"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for sensitivity.md/.json/.png"),
    mode: str = typer.Option("unstructured", help="unstructured (weights zeroed) or structured (channels removed)"),
    ratios: str = typer.Option("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="comma-separated pruning ratios"),
    target: float | None = typer.Option(None, help="also allocate per-layer ratios for this overall ratio"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Per-layer accuracy vs pruning ratio on the validation split; writes a table and a plot."""
    try:
        rs = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise EdgeslimError(f"--ratios: expected comma-separated numbers, got '{ratios}'") from None
    res = api.sensitivity(model, task, out, mode=mode, ratios=rs, target=target)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    console.print((out / "sensitivity.md").read_text(), markup=False, highlight=False)
    console.print(f"written: {', '.join(res['files'])}")
