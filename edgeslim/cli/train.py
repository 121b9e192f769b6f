"""`edgeslim train`: a zoo model on a task, saved as a model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.cli.options import accelerator_option
from edgeslim.errors import EdgeslimError
from edgeslim.train import TrainConfig


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="zoo model name (see `edgeslim models`)"),
    task: str = typer.Option(..., "--task", "-t", help="built-in task name or path to data"),
    out: Path = typer.Option(..., "--out", "-o", help="model folder to write"),
    epochs: int = typer.Option(20, help="training epochs"),
    lr: float = typer.Option(3e-3, help="learning rate"),
    batch_size: int = typer.Option(64, help="batch size"),
    optimizer: str = typer.Option("adam", help="adam, adamw or sgd"),
    weight_decay: float = typer.Option(0.0, help="weight decay (decoupled with adamw)"),
    patience: int = typer.Option(0, help="early stop after N epochs without validation gain (0: off)"),
    seed: int = typer.Option(0, help="random seed"),
    width: float | None = typer.Option(None, help="width (resnet8/dscnn/cnn1d), alpha (mobilenetv1), hidden "
                                       "(gru/lstm) or dim (transformer)"),
    accelerator: str = accelerator_option(),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Train a zoo model on a task; writes model.safetensors + spec.json."""
    try:
        cfg = TrainConfig.model_validate(dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                              weight_decay=weight_decay, patience=patience, seed=seed))
    except Exception as e:
        raise EdgeslimError(f"bad training option: {str(e).splitlines()[-2].strip()}") from None
    kwargs: dict[str, float | int] = {}
    if width is not None:
        from edgeslim.models.student import WIDTH_ARGS

        arg = WIDTH_ARGS.get(model, ("width",))[0]  # the zoo builder's first width argument
        kwargs = {arg: width if arg == "alpha" else int(width)}
    m = api.train(model, task, out, cfg, quiet=as_json, accelerator=accelerator, **kwargs)
    if as_json:
        emit_json(m)
    else:
        console.print(f"trained {model} on {m['task']}: test accuracy {100 * m['test_accuracy']:.2f}%, "
                      f"{m['params']} params, {m['macs']} MACs -> {out}")
