"""The `edgeslim` command. Thin: parse, call `edgeslim.api`, print.

Exit codes: 0 success, 1 a user error (one line, no traceback), 2 an internal error (a bug: please
report; set EDGESLIM_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from edgeslim import api
from edgeslim.errors import EdgeslimError
from edgeslim.train import TrainConfig

app = typer.Typer(
    help="Make neural networks small, fast and frugal enough for edge devices, and prove it.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI: do not squeeze tables to 80
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _emit_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="zoo model name (see `edgeslim models`)"),
    task: str = typer.Option(..., "--task", "-t", help="built-in task name or path to data"),
    out: Path = typer.Option(..., "--out", "-o", help="model folder to write"),
    epochs: int = typer.Option(20, help="training epochs"),
    lr: float = typer.Option(3e-3, help="learning rate"),
    batch_size: int = typer.Option(64, help="batch size"),
    optimizer: str = typer.Option("adam", help="adam, adamw or sgd"),
    patience: int = typer.Option(0, help="early stop after N epochs without validation gain (0: off)"),
    seed: int = typer.Option(0, help="random seed"),
    width: float | None = typer.Option(None, help="width (resnet8/dscnn/cnn1d) or alpha (mobilenetv1)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Train a zoo model on a task; writes model.safetensors + spec.json."""
    try:
        cfg = TrainConfig.model_validate(dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                              patience=patience, seed=seed))
    except Exception as e:
        raise EdgeslimError(f"bad training option: {str(e).splitlines()[-2].strip()}") from None
    kwargs: dict[str, float | int] = {}
    if width is not None:
        kwargs = {"alpha": width} if model == "mobilenetv1" else {"width": int(width)}
    m = api.train(model, task, out, cfg, quiet=as_json, **kwargs)
    if as_json:
        _emit_json(m)
    else:
        console.print(f"trained {model} on {m['task']}: test accuracy {100 * m['test_accuracy']:.2f}%, "
                      f"{m['params']} params, {m['macs']} MACs -> {out}")


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
    from edgeslim.report.results import print_table

    res = api.run(recipe, model, task, out, seed=seed, quiet=as_json, force=force, trust_pickle=trust_pickle)
    if as_json:
        _emit_json(res)
    else:
        print_table(res["stages"], console=console)
        console.print(f"results: {out / 'results.json'}   report: {out / 'report.md'}")


@app.command()
def measure(
    models: list[Path] = typer.Argument(..., help="edgeslim model folders or ONNX files"),
    task: str | None = typer.Option(None, "--task", "-t", help="task for accuracy (optional)"),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads"),
    runs: int = typer.Option(200, help="timed runs per model"),
    device: str | None = typer.Option(None, "--device", "-d", help="device profile for fit/energy (default host)"),
    batch: int | None = typer.Option(None, help="also time this batch size"),
    quick: bool = typer.Option(False, help="skip the deploy figures (arena, flash, energy, PyTorch, RSS)"),
    battery: str | None = typer.Option(None, help="battery for a lifetime estimate, e.g. 225mAh@3V (default: "
                                       "the device profile's, if it has one)"),
    rate: str | None = typer.Option(None, help="inferences per time for the lifetime: 1/s, 10/min, 1/h (default 1/s)"),
    between: str | None = typer.Option(None, help="power state between inferences: sleep (default where the "
                                       "profile has it) or idle"),
    fleet: int | None = typer.Option(None, help="also the yearly energy (kWh) and CO2 of this many devices"),
    grid_intensity: float | None = typer.Option(None, help="g CO2e/kWh for --fleet (default 475, IEA 2019)"),
    save: Path | None = typer.Option(None, "--save", help="also write the results to this JSON file"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Measure size, parameters, MACs, latency, arena, flash, energy (and accuracy with --task) side by side;
    with a battery (option or device default), the estimated battery life."""
    from edgeslim.measure import battery as bat
    from edgeslim.report.results import print_table

    bat.check_options(battery, rate, between, fleet, grid_intensity)
    res = api.measure(models, task, threads=threads, runs=runs, device=device, batch=batch, deploy=not quick)
    lives = bat.annotate_rows(res, device, battery, rate, between, fleet, grid_intensity)  # adds row["battery"]
    if save is not None:
        from edgeslim.fsutil import write_json

        write_json(save, res)
    if as_json:
        _emit_json(res)
    else:
        print_table(res, title="edgeslim measure", console=console)
        if not quick:
            from edgeslim.commands.deploy import print_deploy_table

            print_deploy_table(res, console)
        for name, life in lives:
            console.print(f"[bold]{name}[/bold] on {life.device}:")
            for line in bat.lines(life):
                console.print(f"  {line}", highlight=False)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the model zoo with parameters and MACs at each model's reference input."""
    from rich.table import Table

    from edgeslim.measure.macs import count_macs, count_params
    from edgeslim.models.zoo import ZOO

    rows: list[dict] = []
    for name, e in ZOO.items():
        net = e.build(e.ref_shape, e.ref_classes or 10)
        rows.append({"name": name, "about": e.about, "ref_input": list(e.ref_shape),
                     "params": count_params(net)[0], "macs": count_macs(net, e.ref_shape)})
    if as_json:
        _emit_json(rows)
        return
    t = Table(title="edgeslim model zoo (counts at the reference input)")
    for c in ("name", "about", "reference input", "params", "MACs"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["about"], "x".join(map(str, r["ref_input"])), f"{r['params']:,}", f"{r['macs']:,}")
    console.print(t)


@app.command("passes")
def passes_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the passes a recipe may use, with their config fields and defaults."""
    from rich.table import Table

    from edgeslim.passes import PASSES

    rows: list[dict] = [
        {"name": p.name, "kind": p.kind, "about": p.about,
         "fields": {k: repr(f.get_default(call_default_factory=True)) for k, f in p.config.model_fields.items()}}
        for p in sorted(PASSES.values(), key=lambda p: p.name) if not p.name.startswith("_")
    ]
    if as_json:
        _emit_json(rows)
        return
    t = Table(title="recipe passes (name: {field: value, ...})")
    for c in ("name", "kind", "what it does", "fields (defaults)"):
        t.add_column(c)
    for r in rows:
        fields = ", ".join(f"{k}={v}" for k, v in r["fields"].items())
        t.add_row(r["name"], r["kind"], r["about"], fields)
    console.print(t)


@app.command("tasks")
def tasks_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List built-in tasks and the user-data formats a --task path may take."""
    from edgeslim.data import BUILTIN

    rows = [{"name": k, "about": v[1]} for k, v in BUILTIN.items()]
    formats = [
        ".npz with x_train,y_train,x_test,y_test (or x,y)",
        "folder of images, one sub-folder per class",
        ".csv with a label column (label/class/target/y)",
        "folder in the CIFAR-10 binary layout (data_batch_*.bin, test_batch.bin)",
    ]
    if as_json:
        _emit_json({"builtin": rows, "formats": formats})
        return
    for r in rows:
        console.print(f"[bold]{r['name']}[/bold]  {r['about']}")
    console.print("\nYour own data (--task PATH):")
    for f in formats:
        console.print(f"  - {f}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="folder for the demo's outputs"),
    model: str = typer.Option("cnn1d", help="zoo model to train"),
    task: str = typer.Option("mnist1d", help="task"),
    width: int = typer.Option(128, help="model width (channels of the first layers)"),
    epochs: int = typer.Option(12, help="baseline training epochs"),
    recipe: Path = typer.Option(RECIPES / "demo.yaml", help="compression recipe"),
) -> None:
    """The default job: train a baseline, structured-prune + INT8 it, measure, compare, verdict on a Cortex-M4."""
    from edgeslim.report.summary import print_summary

    t0 = time.time()
    base = out / "baseline"
    if not (base / "spec.json").exists():
        console.print(f"training baseline {model} (width {width}) on {task} ({epochs} epochs)")
        api.train(model, task, base, TrainConfig(epochs=epochs, batch_size=128), width=width)
    res = api.run(recipe, base, task, out / "run")
    print_summary(res, out / "run", console, f"{model} on {task}: baseline vs compressed")
    console.print(f"done in {time.time() - t0:.0f} s", highlight=False)


def _load_commands() -> None:
    from edgeslim import commands

    commands.load_all()


_load_commands()


def main() -> None:
    debug = bool(os.environ.get("EDGESLIM_DEBUG"))
    try:
        app(standalone_mode=False)
    except EdgeslimError as e:
        from rich.markup import escape  # messages hold brackets: paths, `pip install 'edgeslim[litert]'`

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # a usage error from Typer's (vendored) click
            e.show()
            sys.exit(1)
        if debug:
            raise
        Console(stderr=True).print(
            f"[red]internal error:[/red] {type(e).__name__}: {e} (a bug in edgeslim; EDGESLIM_DEBUG=1 shows "
            "the traceback)", highlight=False, soft_wrap=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    # `python -m edgeslim.cli`: run the imported module's app, the one that command modules add to.
    from edgeslim.cli import main as _main

    _main()
