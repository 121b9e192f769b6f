"""`edgeslim distill` (train a student from a teacher folder, no hand-written student needed) and
`edgeslim unpack` (a Deep-Compression `.eshare` file back into a model folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.cli.options import accelerator_option
from edgeslim.errors import EdgeslimError


@app.command()
def distill(
    teacher: Path = typer.Argument(..., help="trained teacher model folder"),
    task: str = typer.Option(..., "--task", "-t", help="built-in task name or path to data"),
    out: Path = typer.Option(..., "--out", "-o", help="student model folder to write"),
    width: float | None = typer.Option(None, help="student width multiplier (default 0.5)"),
    depth: float | None = typer.Option(None, help="fraction of removable blocks the student keeps (default 1)"),
    student_model: str | None = typer.Option(None, help="a student of another zoo architecture, e.g. gru"),
    student_arg: list[str] = typer.Option([], "--student-arg", help="student zoo argument KEY=VALUE, e.g. hidden=32"),
    temperature: float = typer.Option(4.0, help="KD temperature"),
    alpha: float = typer.Option(0.9, help="weight of the KD term (1 - alpha on the labels)"),
    epochs: int = typer.Option(20, help="student training epochs"),
    lr: float = typer.Option(3e-3, help="learning rate"),
    transfer: str | None = typer.Option(None, help="unlabelled inputs for KD: an .npz/.npy file, or generate:N (mnist1d)"),
    transfer_ratio: int | None = typer.Option(None, help="transfer samples per labelled sample each step (default: sizes' ratio, 1-8)"),
    extra_teacher: list[Path] = typer.Option([], "--extra-teacher", help="more teachers (multi-teacher KD)"),
    seed: int = typer.Option(0, help="random seed"),
    accelerator: str = accelerator_option(),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Build a smaller student (from the teacher's architecture, or --student-model) and train it with
    knowledge distillation."""
    import yaml

    sargs: dict = {"model": student_model} if student_model else {}
    for kv in student_arg:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise EdgeslimError(f"--student-arg '{kv}': expected KEY=VALUE, e.g. hidden=32")
        sargs[k.strip()] = yaml.safe_load(v)
    from edgeslim.configs import build_config
    from edgeslim.passes.distill import Distill
    from edgeslim.train import TrainConfig

    multipliers = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}  # only those given
    train = build_config(TrainConfig, "distill", epochs=epochs, lr=lr, seed=seed)
    cfg = build_config(Distill, "distill", **multipliers, student=sargs, temperature=temperature, alpha=alpha,
                teachers=[str(p) for p in extra_teacher], transfer=transfer, transfer_ratio=transfer_ratio,
                train=train)
    m = api.distill(teacher, task, out, cfg, quiet=as_json, accelerator=accelerator)
    if as_json:
        emit_json(m)
    else:
        console.print(f"student {m['arch']} {m['student']}: test accuracy {100 * m['test_accuracy']:.2f}% "
                      f"(teacher {100 * m['teacher_test_accuracy']:.2f}%), {m['params']:,} params "
                      f"(teacher {m['teacher_params']:,}) -> {out}")


@app.command()
def unpack(
    file: Path = typer.Argument(..., help="a .eshare file written by the entropy_code pass"),
    out: Path = typer.Option(..., "--out", "-o", help="model folder to write (safetensors + spec.json)"),
) -> None:
    """Decode an entropy-coded weight-shared model into an ordinary model folder."""
    r = api.unpack(file, out)
    console.print(f"{file} ({r['file_bytes']:,} B) -> {out}")
