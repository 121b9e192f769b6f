"""`edgeslim run` (a recipe on a trained model) and `edgeslim demo` (train a baseline, then run the default
recipe on it)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.report.results import print_table
from edgeslim.train import TrainConfig


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML (see recipes/)"),
    model: Path = typer.Option(..., "--model", "-m", help="trained model folder"),
    task: str = typer.Option(..., "--task", "-t", help="built-in task name or path to data"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (resumed if it holds the same run)"),
    seed: int = typer.Option(0, help="random seed"),
    force: bool = typer.Option(False, help="overwrite a run folder that holds a different run"),
    trust_pickle: bool = typer.Option(False, help="allow loading a .pt pickle (runs code from the file)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Run a compression recipe; writes each stage, results.json and report.md into the run folder."""
    res = api.run(recipe, model, task, out, seed=seed, quiet=as_json, force=force, trust_pickle=trust_pickle)
    if as_json:
        emit_json(res)
    else:
        print_table(res["stages"], console=console)
        console.print(f"results: {out / 'results.json'}   report: {out / 'report.md'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="folder for the demo's outputs"),
    model: str = typer.Option("lenet5", help="zoo model to train"),
    task: str = typer.Option("digits", help="task"),
    epochs: int = typer.Option(30, help="baseline training epochs"),
) -> None:
    """The default job: train a baseline, prune + INT8 it, export, measure, compare."""
    t0 = time.time()
    base = out / "baseline"
    if not (base / "spec.json").exists():
        console.print(f"training baseline {model} on {task} ({epochs} epochs)")
        api.train(model, task, base, TrainConfig(epochs=epochs))
    res = api.run(api.RECIPES / "default.yaml", base, task, out / "run")
    print_table(res["stages"], title=f"{model} on {task}: baseline vs compressed", console=console)
    console.print(f"report: {out / 'run' / 'report.md'}  ({time.time() - t0:.0f} s)")
