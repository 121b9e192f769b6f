"""`edgeslim distill` (train a student from a teacher folder, no hand-written student needed) and
`edgeslim unpack` (a Deep-Compression `.eshare` file back into a model folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim.cli import _emit_json, app, console
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
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Build a smaller student (from the teacher's architecture, or --student-model) and train it with
    knowledge distillation."""
    import torch
    import yaml

    from edgeslim import models
    from edgeslim.data import load_task
    from edgeslim.measure.macs import count_macs, count_params
    from edgeslim.models.student import build_student
    from edgeslim.passes.distill import Distill, distill_model, student_base
    from edgeslim.train import TrainConfig, evaluate

    t = load_task(task, seed=seed)
    tmodel, tspec = models.load_model(teacher)
    extras = [models.load_model(p)[0] for p in extra_teacher]
    sargs: dict = {"model": student_model} if student_model else {}
    for kv in student_arg:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise EdgeslimError(f"--student-arg '{kv}': expected KEY=VALUE, e.g. hidden=32")
        sargs[k.strip()] = yaml.safe_load(v)
    multipliers = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}
    try:
        cfg = Distill(**multipliers, student=sargs, temperature=temperature, alpha=alpha,
                      teachers=[str(p) for p in extra_teacher], transfer=transfer, transfer_ratio=transfer_ratio,
                      train=TrainConfig(epochs=epochs, lr=lr, seed=seed))
    except ValueError as e:
        raise EdgeslimError(f"bad distill option: {e}") from None
    torch.manual_seed(seed)
    student, spec = build_student(student_base(tspec, t, cfg), cfg.width, cfg.depth, cfg.student)
    hist = distill_model(student, [tmodel, *extras], t, cfg, quiet=as_json)
    m = {
        "teacher_test_accuracy": evaluate(tmodel, t.x_test, t.y_test),
        "test_accuracy": evaluate(student, t.x_test, t.y_test), "val_accuracy": hist["val_accuracy"],
        "teacher_params": count_params(tmodel)[0], "params": count_params(student)[0],
        "teacher_macs": count_macs(tmodel, t.input_shape), "macs": count_macs(student, t.input_shape),
        "student": spec["kwargs"],
    }
    models.save_model(out, student, spec, extra={"distill": cfg.model_dump(), "metrics": m})
    if as_json:
        _emit_json(m)
    else:
        console.print(f"student {spec['arch']} {spec['kwargs']}: test accuracy {100 * m['test_accuracy']:.2f}% "
                      f"(teacher {100 * m['teacher_test_accuracy']:.2f}%), {m['params']:,} params "
                      f"(teacher {m['teacher_params']:,}) -> {out}")


@app.command()
def unpack(
    file: Path = typer.Argument(..., help="a .eshare file written by the entropy_code pass"),
    out: Path = typer.Option(..., "--out", "-o", help="model folder to write (safetensors + spec.json)"),
) -> None:
    """Decode an entropy-coded weight-shared model into an ordinary model folder."""
    from edgeslim import models
    from edgeslim.passes.share import load_shared_model

    model, spec = load_shared_model(file)
    models.save_model(out, model, spec)
    console.print(f"{file} ({file.stat().st_size:,} B) -> {out}")
