"""`edgeslim run` (a recipe on a trained model) and `edgeslim demo` (train a baseline, then run the default
recipe on it)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.cli.options import accelerator_option, device_option, json_option
from edgeslim.report.results import print_table
from edgeslim.resources import peak_rss_line
from edgeslim.train import TrainConfig


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="recipe: a built-in name (`edgeslim recipes`) or a YAML path"),
    model: Path = typer.Option(..., "--model", "-m",
                               help="trained model folder, a torch.export program (.pt2), a state dict "
                               "(.safetensors/.pt, with --model-class), or a Hugging Face text-encoder folder"),
    task: str | None = typer.Option(None, "--task", "-t", help="built-in task name or path to data "
                                    "(text encoders: default 'sentences', or a .txt/.jsonl)"),
    inputs: Path | None = typer.Option(None, "--inputs", help="an ONNX model's inputs without labels: .npz with one "
                                       "array per model input, samples on axis 0 (the original is the teacher)"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (resumed if it holds the same run)"),
    seed: int = typer.Option(0, help="random seed"),
    force: bool = typer.Option(False, help="overwrite a run folder that holds a different run"),
    trust_pickle: bool = typer.Option(False, help="allow loading a .pt pickle (runs code from the file)"),
    model_class: str | None = typer.Option(None, "--model-class", help="module:Class that builds the model of "
                                           "a state dict (imported from the working directory)"),
    device: str | None = device_option(help="device profile name or YAML path the run's figures are for "
                                       "(default: the recipe's `device:`, else EDGESLIM_DEVICE, else host)"),
    accelerator: str = accelerator_option(),
    as_json: bool = json_option(),
) -> None:
    """Run a compression recipe; writes each stage, results.json, report.md and report.html into the run folder."""
    from edgeslim.configs import build_config

    opts = build_config(api.RunOptions, "run", seed=seed, quiet=as_json, force=force, trust_pickle=trust_pickle,
                 device=device, model_class=model_class, accelerator=accelerator)
    res = api.run(model, recipe, task, out, opts, inputs=inputs)
    if as_json:
        emit_json(res)
    else:
        title = ("edgeslim results (text encoder; latency p50 at sequence length 128, batch 1, 1 thread, all "
                 "stages timed interleaved)" if res.get("kind") == "text-encoder" else "edgeslim results")
        print_table(res["stages"], title=title, console=console)
        console.print(f"results: {out / 'results.json'}   report: {out / 'report.html'} (and report.md)",
                      highlight=False)
        console.print(peak_rss_line(), highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="folder for the demo's outputs"),
    model: str = typer.Option("cnn1d", help="zoo model to train"),
    task: str = typer.Option("mnist1d", help="task"),
    width: int = typer.Option(128, help="model width (channels of the first layers)"),
    epochs: int = typer.Option(15, help="baseline training epochs"),
    recipe: Path = typer.Option(Path("demo"), help="compression recipe: a built-in name or a YAML path"),
) -> None:
    """The default job: train a baseline, structured-prune + INT8 it, measure, compare, verdict on a Cortex-M4."""
    import torch

    from edgeslim.report.summary import print_summary

    # one thread: as fast for models this small, and it stays fast on a shared machine (two threads spinning
    # against other processes made the demo 5-10x slower on a loaded 2-core VM)
    torch.set_num_threads(1)
    t0 = time.time()
    base = out / "baseline"
    if not (base / "spec.json").exists():
        console.print(f"training baseline {model} (width {width}) on {task} ({epochs} epochs)")
        api.train(model, task, base, TrainConfig(epochs=epochs, batch_size=128), width=width)
    res = api.run(base, recipe, task, out / "run")
    print_summary(res, out / "run", console, f"{model} on {task}: baseline vs compressed")
    console.print(f"done in {time.time() - t0:.0f} s", highlight=False)
