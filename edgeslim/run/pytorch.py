"""The PyTorch-program handler of the one stage loop: a model given as a `torch.export` program (`.pt2`), a
state dict with `--model-class`, or a trusted pickle. Every stage (the baseline too) is stored as a `.pt2`
program plus `spec.json` (`models.program.save_program`): it reopens for resume, `export` and as the
distillation teacher with no user code and no unpickling. Metrics, export and the final interleaved timing
are the zoo handler's (one input, a task's arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.errors import EdgeslimError
from edgeslim.models import program
from edgeslim.models.outputs import output_list, output_names
from edgeslim.run.handlers import ModelHandler


class FlatOutputs(nn.Module):
    """A model with several outputs (a tuple, list or dict of tensors: a mask and a score, boxes and classes) as
    one input -> one [N, D] output, its outputs flattened and concatenated per sample: what the passes train and judge
    (the targets of a run without labels are the original's outputs in the same layout). Stages store and export
    `inner`, so the files keep the model's own outputs (`ProgramHandler`)."""

    def __init__(self, inner: nn.Module, names: list[str], input_shape: tuple[int, ...]):
        super().__init__()
        self.inner = inner
        self.names = list(names)
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([o.reshape(o.shape[0], -1).float() for o in output_list(self.inner(x))], 1)

    def teacher_parts(self, x1: torch.Tensor) -> list:
        """Each output as a target row holds it (`train.output_parts`): score outputs are also judged by top-1."""
        from edgeslim.onnxkit.scoring import OutputPart

        outs = output_list(self.inner(x1[:1]))
        names = self.names or output_names(outs) or ["output"]
        return [OutputPart(n, tuple(o.shape), exact=not o.is_floating_point()) for n, o in zip(names, outs)]

    def prune_ignored(self) -> list[nn.Module]:
        """The Conv/Linear layers whose result is one of the outputs: channel pruning keeps them whole (the
        last layer to run, which `prune.structured.output_layers` keeps, is only one of them)."""
        found: dict[int, nn.Module] = {}
        made: list[tuple[nn.Module, torch.Tensor]] = []
        hooks = [m.register_forward_hook(lambda m, i, o: made.append((m, o)))
                 for m in self.inner.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        try:
            with torch.no_grad():
                outs = output_list(self.inner(torch.zeros(2, *self.input_shape)))
        finally:
            for h in hooks:
                h.remove()
        ptrs = {o.untyped_storage().data_ptr() for o in outs}
        for m, o in made:
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() in ptrs:
                found[id(m)] = m
        return list(found.values())


def probe_output_names(model: nn.Module, input_shape: tuple[int, ...]) -> list[str] | None:
    """`output_names` of `model` on zeros; None too where zeros do not run (a model of token ids: its own run says
    why, where it fails)."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except Exception:  # a probe only  # noqa: BLE001
        return None
    return output_names(out)


def several_outputs(model: nn.Module, spec: dict, labelled: bool, where: Path) -> nn.Module:
    """`model` as the passes take it: as it is when it returns one tensor, else `FlatOutputs` with the outputs
    named in `spec["outputs"]` (`output_names`). A run with labels takes one output, said in one line."""
    shape = tuple(spec["input_shape"])
    names = probe_output_names(model, shape)
    if names is None:
        return model
    if labelled:
        raise EdgeslimError(f"{where}: the model returns {len(names)} outputs ({', '.join(names)}); a run with labels "
                            "(--task) trains one output against them; run it with --inputs X.npz (no labels: its own "
                            "outputs are the targets)")
    spec["outputs"] = names
    return FlatOutputs(model, names, shape)


class ProgramHandler(ModelHandler):
    """Stages of a model with several outputs (`spec["outputs"]`) are stored and exported as the model's own
    module (`FlatOutputs.inner`: the files keep its outputs) and reopened as the passes' `FlatOutputs` view."""

    kind = "pytorch"

    def _view(self, model: nn.Module, spec: dict | None) -> nn.Module:
        spec = spec or self.spec
        if not spec.get("outputs") or isinstance(model, FlatOutputs):
            return model
        return FlatOutputs(model, spec["outputs"], tuple(spec["input_shape"]))

    def teacher_loader(self, out: Path, original: Any) -> Any:
        return lambda: self._view(*program.reopen_program(out / "stages" / "00_baseline"))

    def save(self, folder: Path, model: Any, spec: dict) -> None:
        program.save_program(folder, model.inner if isinstance(model, FlatOutputs) else model, spec)

    def reopen(self, folder: Path) -> tuple[Any, dict | None] | None:
        if not (folder / program.PROGRAM).exists():
            return None
        model, spec = program.reopen_program(folder)
        return self._view(model, spec), spec

    def export(self, model: Any, onnx_path: Path, task: Any) -> dict:
        from edgeslim.deploy.export import export_onnx

        inner = model.inner if isinstance(model, FlatOutputs) else model  # the model's own outputs (`output_names`)
        return export_onnx(inner, task.input_shape, onnx_path, check=task.x_test[:64])


def inputs_handler(spec: dict, threads: int) -> ModelHandler:
    """The handler of a run without labels (`run --inputs`) on a PyTorch program or a zoo folder: stages as
    their kind stores them, metrics as fidelity to the baseline stage on the held-out inputs."""
    from edgeslim.run.onnx import FidelityStages

    class ProgramInputs(FidelityStages, ProgramHandler):
        kind = "pytorch"

    class ZooInputs(FidelityStages):
        kind = "zoo"

    return (ProgramInputs if spec.get("arch") == "program" else ZooInputs)(spec, threads)
