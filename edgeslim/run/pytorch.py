"""The PyTorch-program handler of the one stage loop: a model given as a `torch.export` program (`.pt2`), a
state dict with `--model-class`, or a trusted pickle. Every stage (the baseline too) is stored as a `.pt2`
program plus `spec.json` (`models.program.save_program`): it reopens for resume, `export` and as the
distillation teacher with no user code and no unpickling. Metrics, export and the final interleaved timing
are the zoo handler's (one input, a task's arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim.models import program
from edgeslim.run.handlers import ModelHandler


class ProgramHandler(ModelHandler):
    kind = "pytorch"

    def teacher_loader(self, out: Path, original: Any) -> Any:
        return lambda: program.reopen_program(out / "stages" / "00_baseline")[0]

    def save(self, folder: Path, model: Any, spec: dict) -> None:
        program.save_program(folder, model, spec)

    def reopen(self, folder: Path) -> tuple[Any, dict | None] | None:
        if not (folder / program.PROGRAM).exists():
            return None
        return program.reopen_program(folder)


def inputs_handler(spec: dict, threads: int) -> ModelHandler:
    """The handler of a run without labels (`run --inputs`) on a PyTorch program or a zoo folder: stages as
    their kind stores them, metrics as fidelity to the baseline stage on the held-out inputs."""
    from edgeslim.run.onnx import FidelityStages

    class ProgramInputs(FidelityStages, ProgramHandler):
        kind = "pytorch"

    class ZooInputs(FidelityStages):
        kind = "zoo"

    return (ProgramInputs if spec.get("arch") == "program" else ZooInputs)(spec, threads)
