"""Run a recipe: baseline stage, then each pass in order, each written atomically into the run folder.

```
RUN/run.json                 what was run (model, task, recipe digest, seed): resume checks it; and the device
RUN/recipe.yaml
RUN/stages/00_baseline/      model.safetensors, spec.json, model.onnx, metrics.json
RUN/stages/01_<pass>/        ...
RUN/stages/NN_<pass>/predictions.npz   a classifier's test outputs (behaviour analysis)
RUN/results.json, RUN/report.md, RUN/report.html, RUN/plots/
```
A stage folder appears only when complete, so a killed run resumes from the last finished stage. Each stage
is exported to ONNX once and measured by the measurement core as it finishes (for resume). The device
(`--device`, else the recipe's `device:`, else EDGESLIM_DEVICE, else the default profile) is recorded in
run.json; a run resumed with another device re-measures the device figures of its finished stages and
reuses everything else. At the end, every stage's ONNX model is timed together, interleaved in one loop
(`measure.together.time_stages`): those latencies are the table's, so its speed-ups agree with the passes'
own comparisons. The stages run in the one stage loop (`edgeslim.run.loop`) with the zoo's model handler, or for a PyTorch
program (`.pt2`, a state dict + `model_class`, a trusted pickle) `run.pytorch.ProgramHandler`: its stages are
stored as `.pt2` programs that reopen without the user's code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from edgeslim import accelerator, models, resources, runlock
from edgeslim.data import Task
from edgeslim.devices import DEFAULT_DEVICE, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.models.program import check_batch
from edgeslim.recipe import Recipe
from edgeslim.run import RESUME, ModelHandler, run_stages
from edgeslim.run.pytorch import ProgramHandler

__all__ = ["RESUME", "RESULT_FIELDS", "run_inputs_recipe", "run_onnx_recipe", "run_recipe"]
RESULT_FIELDS = ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes", "latency_ms_p50", "onnx")


def run_recipe(
    recipe: Recipe, model_dir: Path, task: Task, out: Path, *, seed: int = 0, quiet: bool = False,
    force: bool = False, trust_pickle: bool = False, task_spec: str = "", device: str | None = None,
    threads: int = 1, report: bool = True, model_class: str | None = None,
) -> dict:
    """Run (or resume) `recipe` on the model in `model_dir` for `device` (see the module docstring). Returns
    the results dict. With `report` (default), the stages are compared at the end (`measure.stage_compare`:
    device verdict, layers, behaviour) and report.html is written."""
    out = Path(out)
    ident = {
        "model": str(Path(model_dir).resolve()), "task": task_spec or task.name,
        "recipe_digest": recipe.digest, "seed": seed,
    }
    # everything that can refuse the run is checked before the first write (runlock.check_claim too)
    dev = device or recipe.device or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE
    load_device(dev)  # an unknown device is one line
    model, spec = models.load_model(model_dir, trust_pickle=trust_pickle, model_class=model_class)
    if spec.get("arch") == "program":  # a PyTorch program: its input shape is the task's unless it fixes one
        spec.setdefault("input_shape", list(task.input_shape))
        check_batch(model, task.input_shape, Path(model_dir))
    _check_input(spec, task, model_dir)
    resources.check_recipe(list(recipe.steps), recipe.finetune, model, task.input_shape, len(task.x_train))
    with runlock.claimed(out, ident, force, dev, {"accelerator": accelerator.describe()}) as before:
        if before is not None:
            _log(quiet, f"device {before} -> {dev}: re-measuring the device figures of finished stages")
        return _run_stages(recipe, model, spec, task, out, ident, seed, quiet, dev, threads, report)


def _run_stages(recipe: Recipe, model: nn.Module, spec: dict, task: Task, out: Path, ident: dict, seed: int,
                quiet: bool, dev: str, threads: int, report: bool = True) -> dict:
    h: ModelHandler
    if task.metric == "fidelity":  # no labels (run --inputs): the original is the teacher
        from edgeslim.run.pytorch import inputs_handler

        h = inputs_handler(spec, threads)
        h.write_splits(out, task)  # type: ignore[attr-defined]
    else:
        h = ProgramHandler(spec, threads) if spec.get("arch") == "program" else ModelHandler(spec, threads)
    return run_stages(h, recipe, model, task, out, ident, seed, quiet, dev, threads, report)


def run_inputs_recipe(recipe: Recipe, model_dir: Path, inputs: Path, out: Path, *, seed: int = 0, quiet: bool = False,
                      force: bool = False, trust_pickle: bool = False, device: str | None = None, threads: int = 1,
                      model_class: str | None = None) -> dict:
    """`run_recipe` without labels on a PyTorch program or a zoo folder: the user's samples (`inputs`, an .npz
    holding one array [N, *input shape]) with the original model's outputs as the targets (`data.unlabelled`)."""
    from edgeslim.data.unlabelled import teacher_task
    from edgeslim.onnxkit.inputs import single_input_samples
    from edgeslim.train import predict

    model, spec = models.load_model(model_dir, trust_pickle=trust_pickle, model_class=model_class)
    shape = spec.get("input_shape")
    if not shape:
        raise EdgeslimError(f"{model_dir}: the model does not say its input shape; export the program at a fixed "
                            "sample shape (only the batch dimension dynamic)")
    x = single_input_samples(inputs, tuple(shape), holder="the model")

    def teacher(a: Any) -> Any:
        return predict(model, a).reshape(len(a), -1)

    task = teacher_task(str(inputs), x, teacher, seed)
    return run_recipe(recipe, model_dir, task, out, seed=seed, quiet=quiet, force=force, trust_pickle=trust_pickle,
                      task_spec=f"inputs:{Path(inputs).resolve()}", device=device, threads=threads,
                      model_class=model_class)


def run_onnx_recipe(recipe: Recipe, model: Path, inputs: Path | None, out: Path, *, seed: int = 0, quiet: bool = False,
                    force: bool = False, device: str | None = None, threads: int = 1, task: str | None = None) -> dict:
    """Run (or resume) `recipe` on the ONNX file `model` with the user's inputs `inputs` (an .npz, one array per
    model input, samples on axis 0) and no labels: the original is the teacher (`data.unlabelled`,
    `run.onnx.OnnxHandler`). The model is converted (and refused, in one line) before the data is read."""
    import numpy as np

    from edgeslim.data.unlabelled import teacher_task
    from edgeslim.onnxkit.inputs import input_specs, load_npz
    from edgeslim.onnxkit.load import read_onnx
    from edgeslim.run.onnx import OnnxHandler, convert, flat_outputs, onnx_outputs

    out, model = Path(out), Path(model)
    dev = device or recipe.device or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE
    load_device(dev)
    specs = input_specs(read_onnx(model))
    spec_in = specs[0]
    # a batch fixed at 1: each sample runs alone (its outputs may carry the batch on another axis, e.g. [T, 1, C])
    per_sample = spec_in.dims is not None and len(spec_in.dims) > 0 and spec_in.dims[0] == 1
    original = convert(model, (), per_sample)  # the model first: an op that cannot be converted is one line
    if spec_in.dtype.kind != "f":
        raise EdgeslimError(f"{model}: input '{spec_in.name}' is {spec_in.dtype}; run --inputs trains on float inputs")
    fixed = spec_in.dims is not None and len(spec_in.dims) > 0 and isinstance(spec_in.dims[0], int)
    if task is not None:  # labels: trained on them, accuracy as for any task, plus the fidelity to the original
        from edgeslim.data import load_task

        t = load_task(task, seed=seed)
        want = tuple(spec_in.dims[1:]) if spec_in.dims else ()
        if len(want) != len(t.input_shape) or any(isinstance(d, int) and d != g for d, g in zip(want, t.input_shape)):
            raise EdgeslimError(f"{model}: input '{spec_in.name}' takes samples of shape "
                                f"{[d if isinstance(d, int) else '?' for d in want]} but task '{t.name}' has "
                                f"{list(t.input_shape)}")
        ident_task = task
    else:
        assert inputs is not None
        x = np.concatenate([f[spec_in.name] for f in load_npz(inputs, specs)]).astype(np.float32, copy=False)

        def teacher(a: np.ndarray) -> np.ndarray:
            return flat_outputs(onnx_outputs(model, spec_in.name, a, fixed, threads), per_sample)

        t = teacher_task(str(inputs), x, teacher, seed)
        ident_task = f"inputs:{Path(inputs).resolve()}"
    spec = {"format": 1, "arch": "onnx", "source": str(model.resolve()), "input_name": spec_in.name,
            "fixed_batch": fixed, "per_sample": per_sample, "input_shape": list(t.input_shape), "edits": []}
    ident = {"model": str(model.resolve()), "task": ident_task, "recipe_digest": recipe.digest, "seed": seed,
             "kind": "onnx"}
    with runlock.claimed(out, ident, force, dev, {"accelerator": accelerator.describe()}):
        h = OnnxHandler(spec, threads)
        h.write_splits(out, t)
        return run_stages(h, recipe, original, t, out, ident, seed, quiet, dev, threads)


def _check_input(spec: dict, task: Task, model_dir: Path) -> None:
    want = tuple(spec.get("input_shape", ()))
    if want and want != task.input_shape:
        raise EdgeslimError(
            f"{model_dir}: model expects inputs of shape {want} but task '{task.name}' has {task.input_shape}"
        )
    nc = spec.get("num_classes")
    if nc and task.num_classes and nc != task.num_classes:  # (0: no labels, the model's outputs are the targets)
        raise EdgeslimError(
            f"{model_dir}: model has {nc} classes but task '{task.name}' has {task.num_classes}"
        )


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)
