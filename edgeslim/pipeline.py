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
(`run.together.time_stages`): those latencies are the table's, so its speed-ups agree with the passes'
own comparisons. The stages run in the one stage loop (`edgeslim.run.loop`) with the zoo's model handler, or for a PyTorch
program (`.pt2`, a state dict + `model_class`, a trusted pickle) `run.pytorch.ProgramHandler`: its stages are
stored as `.pt2` programs that reopen without the user's code. An in-memory module (`run_module_recipe`) is
captured by `torch.export` into RUN/model.pt2 and runs as that program. How a run goes (device, seed, force,
threads, report, accelerator, ...) is one `RunOptions` (`edgeslim.run.options`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim import accelerator, models, resources, runlock
from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_bytes
from edgeslim.models.program import check_batch
from edgeslim.recipe import Recipe
from edgeslim.run import RESUME, ModelHandler, RunOptions, run_options, run_stages
from edgeslim.run.pytorch import ProgramHandler, several_outputs

__all__ = ["RESUME", "RESULT_FIELDS", "RunOptions", "run_inputs_recipe", "run_module_recipe", "run_onnx_recipe",
           "run_recipe"]
RESULT_FIELDS = ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes", "latency_ms_p50", "onnx")


def run_recipe(recipe: Recipe, model_dir: Path, task: Task, out: Path, options: RunOptions | None = None, *,
               task_spec: str = "", **fields: Any) -> dict:
    """Run (or resume) `recipe` on the model in `model_dir` (see the module docstring) with `options`
    (`RunOptions`, or any of its fields as keywords: `seed=1, device="cortex-m4", report=False`). Returns the
    results dict. With `report` (default), the stages are compared at the end (`run.stage_compare`: device
    verdict, layers, behaviour) and report.html is written."""
    o = run_options(options, fields)
    with o.accelerated():
        o = o.resolved(recipe.device)  # everything that can refuse the run is checked before the first write
        model, spec = models.load_model(model_dir, trust_pickle=o.trust_pickle, model_class=o.model_class)
        ident = {"model": str(Path(model_dir).resolve()), "task": task_spec or task.name,
                 "recipe_digest": recipe.digest, "seed": o.seed}
        return _run_loaded(recipe, model, spec, task, Path(out), ident, o, Path(model_dir))


def run_module_recipe(recipe: Recipe, module: nn.Module, task: Task | None, inputs: Path | None, out: Path,
                      options: RunOptions | None = None, *, task_spec: str = "", **fields: Any) -> dict:
    """`run_recipe` on an in-memory module: captured by `torch.export` (batch dimension dynamic) on the first
    two samples of `task` (or of `inputs`, an .npz holding one array [N, *input shape], with the module's
    outputs as the targets) and stored in the run folder as `model.pt2`, then run as that PyTorch program. The
    run's identity holds a digest of the module's weights: another module in the same folder needs `force`."""
    import tempfile

    from edgeslim.models.program import PROGRAM, load_program, program_bytes

    o = run_options(options, fields)
    out = Path(out)
    with o.accelerated():
        o = o.resolved(recipe.device)
        where = f"module {type(module).__name__}"
        if inputs is not None:
            x = _input_samples(Path(inputs), None, where)
        else:
            assert task is not None, "a module runs on a task or on inputs"
            x = task.x_train
        net = copy.deepcopy(module).cpu().eval()
        example = torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32))
        data = program_bytes(net, example, where, "torch.export cannot capture this module; api.run takes a module "
                             "that torch.export.export(module, (x,)) captures with a dynamic batch dimension")
        with tempfile.TemporaryDirectory(prefix="edgeslim-module-") as tmp:
            (Path(tmp) / PROGRAM).write_bytes(data)
            model = load_program(Path(tmp) / PROGRAM)
        file = out / PROGRAM
        spec = {"format": 1, "arch": "program", "source": str(file.resolve()), "module": type(module).__qualname__,
                "input_shape": list(x.shape[1:]), "edits": []}
        if inputs is not None:
            task, task_spec = _teacher_task(net, Path(inputs), x, o.seed), f"inputs:{Path(inputs).resolve()}"
        assert task is not None
        ident = {"model": str(file.resolve()), "model_digest": _weights_digest(module),
                 "task": task_spec or task.name, "recipe_digest": recipe.digest, "seed": o.seed}
        return _run_loaded(recipe, model, spec, task, out, ident, o, Path(where),
                           claimed=lambda: write_bytes(file, data))


def _run_loaded(recipe: Recipe, model: nn.Module, spec: dict, task: Task, out: Path, ident: dict, o: RunOptions,
                where: Path, claimed: Callable[[], None] | None = None) -> dict:
    """The checks of a loaded model against the task and the recipe, then the claimed run folder (`claimed`
    called once it is ours) and the stage loop."""
    if spec.get("arch") == "program":  # a PyTorch program: its input shape is the task's unless it fixes one
        spec.setdefault("input_shape", list(task.input_shape))
        check_batch(model, task.input_shape, where)
        model = several_outputs(model, spec, task.metric != "fidelity", where)  # a tuple of outputs: one flat view
    _check_input(spec, task, where)
    resources.check_recipe(list(recipe.steps), recipe.finetune, model, task.input_shape, len(task.x_train))
    assert o.device is not None
    with runlock.claimed(out, ident, o.force, o.device, {"accelerator": accelerator.describe()}) as before:
        if before is not None:
            _log(o.quiet, f"device {before} -> {o.device}: re-measuring the device figures of finished stages")
        if claimed is not None:
            claimed()
        return _run_stages(recipe, model, spec, task, out, ident, o)


def _run_stages(recipe: Recipe, model: nn.Module, spec: dict, task: Task, out: Path, ident: dict,
                o: RunOptions) -> dict:
    h: ModelHandler
    if task.metric == "fidelity":  # no labels (run --inputs): the original is the teacher
        from edgeslim.run.pytorch import inputs_handler

        h = inputs_handler(spec, o.threads)
        h.write_splits(out, task)  # type: ignore[attr-defined]
    else:
        h = ProgramHandler(spec, o.threads) if spec.get("arch") == "program" else ModelHandler(spec, o.threads)
    return run_stages(h, recipe, model, task, out, ident, o)


def run_inputs_recipe(recipe: Recipe, model_dir: Path, inputs: Path, out: Path, options: RunOptions | None = None,
                      **fields: Any) -> dict:
    """`run_recipe` without labels on a PyTorch program or a zoo folder: the user's samples (`inputs`, an .npz
    holding one array [N, *input shape]) with the original model's outputs as the targets (`data.unlabelled`)."""
    o = run_options(options, fields)
    model, spec = models.load_model(model_dir, trust_pickle=o.trust_pickle, model_class=o.model_class)
    shape = spec.get("input_shape")
    if not shape:
        raise EdgeslimError(f"{model_dir}: the model does not say its input shape; export the program at a fixed "
                            "sample shape (only the batch dimension dynamic)")
    x = _input_samples(Path(inputs), tuple(shape), "the model")
    task = _teacher_task(model, Path(inputs), x, o.seed)
    return run_recipe(recipe, model_dir, task, out, o, task_spec=f"inputs:{Path(inputs).resolve()}")


def _input_samples(inputs: Path, shape: tuple[int, ...] | None, holder: str) -> np.ndarray:
    """The samples [N, *shape] of an .npz holding one array (`shape` None: the array's own, batch first)."""
    from edgeslim.onnxkit.inputs import read_npz, single_input_samples

    if shape is None:
        if not Path(inputs).is_file():
            raise EdgeslimError(f"{inputs}: no such inputs file (an .npz holding one array [N, *input shape])")
        shape = tuple(next(iter(read_npz(inputs).values()), np.zeros((1,))).shape[1:])
    return single_input_samples(inputs, shape, holder=holder)


def _teacher_task(model: nn.Module, inputs: Path, x: np.ndarray, seed: int) -> Task:
    """The task of the user's samples with `model`'s outputs as the targets."""
    from edgeslim.data.unlabelled import teacher_task
    from edgeslim.train import predict

    view = several_outputs(model, {"input_shape": list(x.shape[1:])}, False, inputs)  # several outputs: one row

    def teacher(a: Any) -> Any:
        return predict(view, a).reshape(len(a), -1)

    return teacher_task(str(inputs), x, teacher, seed)


def _weights_digest(module: nn.Module) -> str:
    """sha256 (first 16 hex digits) of the module's class and state dict: names, dtypes, shapes and values."""
    import hashlib

    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_onnx_recipe(recipe: Recipe, model: Path, inputs: Path | None, out: Path, options: RunOptions | None = None, *,
                    task: str | None = None, **fields: Any) -> dict:
    """Run (or resume) `recipe` on the ONNX file `model` with the user's inputs `inputs` (an .npz, one array per
    model input, samples on axis 0) and no labels: the original is the teacher (`data.unlabelled`,
    `run.onnx.OnnxHandler`). The model is converted (and refused, in one line) before the data is read."""
    from edgeslim.data.unlabelled import teacher_task
    from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds
    from edgeslim.onnxkit.load import read_onnx
    from edgeslim.run.onnx import OnnxHandler, convert, flat_outputs, onnx_outputs

    o = run_options(options, fields)
    out, model = Path(out), Path(model)
    o = o.resolved(recipe.device)
    seed, threads = o.seed, o.threads
    specs = input_specs(read_onnx(model))
    spec_in = specs[0]
    lead = spec_in.dims[0] if spec_in.dims else None
    no_batch = spec_in.dims is not None and (not spec_in.dims or (isinstance(lead, int) and lead != 1))
    if len(specs) > 1 or (no_batch and task is None):
        # several inputs (any dtype), recurrent state, or one input without a batch axis (each sample is the
        # whole input, run one at a time): packed rows, streams (run.streams)
        return _run_onnx_layout(recipe, model, specs, inputs, out, o, task=task)
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
        x = np.concatenate([f[spec_in.name] for f in load_npz_feeds(inputs, specs)]).astype(np.float32, copy=False)

        def teacher(a: np.ndarray) -> np.ndarray:
            return flat_outputs(onnx_outputs(model, spec_in.name, a, fixed, threads), per_sample)

        t = teacher_task(str(inputs), x, teacher, seed)
        ident_task = f"inputs:{Path(inputs).resolve()}"
    spec = {"format": 1, "arch": "onnx", "source": str(model.resolve()), "input_name": spec_in.name,
            "fixed_batch": fixed, "per_sample": per_sample, "input_shape": list(t.input_shape), "edits": []}
    ident = {"model": str(model.resolve()), "task": ident_task, "recipe_digest": recipe.digest, "seed": seed,
             "kind": "onnx"}
    assert o.device is not None
    with o.accelerated(), runlock.claimed(out, ident, o.force, o.device, {"accelerator": accelerator.describe()}):
        h = OnnxHandler(spec, threads)
        h.write_splits(out, t)
        return run_stages(h, recipe, original, t, out, ident, o)


def _run_onnx_layout(recipe: Recipe, model: Path, specs: list, inputs: Path | None, out: Path, o: RunOptions, *,
                     task: str | None) -> dict:
    """`run_onnx_recipe` for a model of several inputs: converted first (one line when it cannot be), then the
    user's inputs packed into one row per sample (`run.onnx_layout.layout_task`), streams for recurrent state."""
    from edgeslim.onnxtorch import onnx_to_torch
    from edgeslim.run.onnx_layout import LayoutOnnxHandler, PackedView, layout_task
    from edgeslim.run.streams import Layout

    conv, _ = onnx_to_torch(model)  # the model first: an op that cannot be converted is one line
    if task is not None or inputs is None:
        raise EdgeslimError(f"{model}: the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); "
                            "give them with --inputs FILE.npz (one array per input, samples on axis 0), not --task")
    seed, threads = o.seed, o.threads
    assert o.device is not None
    t, lay, blocks = layout_task(model, Path(inputs), specs, seed, threads)
    spec = {"format": 1, "arch": "onnx", "source": str(model.resolve()), "input_name": "packed",
            "fixed_batch": lay.per_sample, "per_sample": lay.per_sample, "input_shape": [lay.width], "edits": [],
            "layout": lay.as_dict()}
    ident = {"model": str(model.resolve()), "task": f"inputs:{Path(inputs).resolve()}", "recipe_digest": recipe.digest,
             "seed": seed, "kind": "onnx"}
    original = PackedView(conv, Layout.from_dict(lay.as_dict())).eval()
    with o.accelerated(), runlock.claimed(out, ident, o.force, o.device, {"accelerator": accelerator.describe()}):
        h = LayoutOnnxHandler(spec, threads, blocks)
        h.write_splits(out, t)
        return run_stages(h, recipe, original, t, out, ident, o)


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
