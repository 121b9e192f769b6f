"""Every job a Python user needs, one function each. The CLI (`edgeslim.cli`) is a thin layer over these.

```python
from edgeslim import api
from edgeslim.passes.structured_prune import StructuredPrune

api.train("resnet8", "digits", Path("base"))
net, spec = api.load_model(Path("base"))
res = api.compress(net, StructuredPrune(ratio=0.5), "digits", spec=spec)   # one pass, in memory
api.run("structured-50", Path("base"), "digits", Path("runs/s50"))  # a whole recipe (built-in name or a path)
api.run("structured-50", my_module, "digits", Path("runs/mine"), device="cortex-m4")  # an in-memory nn.Module
api.measure([Path("runs/s50/stages/01_structured_prune")], task="digits", device="cortex-m4")
```
Functions return plain data (dicts of numbers with units in their keys) or the library's records; they
print nothing unless asked (`quiet=False`, `log=`). User mistakes raise `EdgeslimError`.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from edgeslim import accelerator as accel
from edgeslim import interrupt, models
from edgeslim.api_catalog import (
    list_devices,
    list_models,
    list_passes,
    list_recipes,
    list_tasks,
)
from edgeslim.api_measure import check_fit, compile_model, measure, plan_arena
from edgeslim.data import Task, load_task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.guard import TrainingDiverged
from edgeslim.models import load_model, save_model
from edgeslim.models.counts import count_macs, count_params
from edgeslim.recipe import RECIPE_DIR, builtin_recipes, load_recipe
from edgeslim.train import TrainConfig, evaluate, train_model

if TYPE_CHECKING:
    from edgeslim.litert.options import ExportOptions
    from edgeslim.measure.options import MeasureOptions
    from edgeslim.onnxopt.run import OptimizeConfig
    from edgeslim.passes.distill import Distill
    from edgeslim.run.options import RunOptions
    from edgeslim.search.job import SearchJob

# One config object per job (torchao's shape), imported on first use: `api.OptimizeConfig(...)`
CONFIGS = {"OptimizeConfig": "edgeslim.onnxopt.run", "MeasureOptions": "edgeslim.measure.options",
           "SearchJob": "edgeslim.search.job", "Distill": "edgeslim.passes.distill",
           "RunOptions": "edgeslim.run.options", "ExportOptions": "edgeslim.litert.options"}


def __getattr__(name: str) -> Any:
    if name in CONFIGS:
        import importlib

        return getattr(importlib.import_module(CONFIGS[name]), name)
    raise AttributeError(f"module 'edgeslim.api' has no attribute {name!r}")


RECIPES = RECIPE_DIR  # the built-in recipes, package data (edgeslim/recipes/*.yaml); `run` takes their names


def train(
    model: str, task: str | Task, out: Path, cfg: TrainConfig | None = None, quiet: bool = False, *,
    accelerator: str = "auto", **model_kwargs: Any,
) -> dict:
    """Train a zoo model on a task and save it as an edgeslim model folder. Returns its metrics.
    `accelerator`: where training runs (`edgeslim.accelerator`: auto picks the GPU PyTorch sees)."""
    with accel.use(accelerator):
        return _train(model, task, out, cfg, quiet, **model_kwargs)


def _train(model: str, task: str | Task, out: Path, cfg: TrainConfig | None, quiet: bool, **model_kwargs: Any) -> dict:
    t = load_task(task, seed=(cfg.seed if cfg else 0)) if isinstance(task, str) else task
    cfg = cfg or TrainConfig()
    spec = models.make_spec(model, t.input_shape, t.num_classes, **model_kwargs)
    import torch

    torch.manual_seed(cfg.seed)
    net = models.build_model(spec)
    out = Path(out)
    ckpt = out.parent / f".{out.name}.train-checkpoint.pt"  # beside the folder: resumes a killed training
    try:
        hist = train_model(net, t, cfg, desc=f"train {model}", quiet=quiet, checkpoint=ckpt)
    except TrainingDiverged as e:  # keep the last good weights the trainer restored
        models.save_model(out, net, spec, extra={"train": cfg.model_dump(), "diverged": str(e)})
        raise TrainingDiverged(f"{e}; saved them to {out}", e.good_epoch) from None
    params, nonzero = count_params(net)
    metrics = {
        "model": model,
        "task": t.name,
        "test_accuracy": evaluate(net, t.x_test, t.y_test),
        "val_accuracy": hist["val_accuracy"],
        "epochs": hist["epochs"],
        "params": params,
        "macs": count_macs(net, t.input_shape),
    }
    models.save_model(out, net, spec, extra={"train": cfg.model_dump(), "metrics": metrics})
    ckpt.unlink(missing_ok=True)
    return metrics


def run(model: Path | str | nn.Module, recipe: Path | str, task: str | Path | Task | None, out: Path,
        options: RunOptions | None = None, *, device: str | None = None, inputs: Path | None = None,
        **fields: Any) -> dict:
    """Run a recipe on a model for `device` (default: the recipe's `device:`, else EDGESLIM_DEVICE, else the
    default profile); writes run.json, the stages, results.json, report.md and report.html into `out`. A resume
    with another device re-measures the device figures and reuses the trained stages. `recipe`: a YAML path or a
    built-in recipe's name (see `list_recipes`). How the run goes: `options` (`api.RunOptions`: seed, force,
    quiet, threads, report, trust_pickle, model_class, accelerator), or any of its fields as keywords.

    `model`: a trained model folder; your own PyTorch model as a `torch.export` program (`.pt2`), a state dict
    with `model_class` (`module:Class`, imported from the working directory) or a trusted pickle; or an
    in-memory `nn.Module`, captured by `torch.export` on the first samples of the task (or `inputs`) into
    `out/model.pt2` and run as that program. Stages of PyTorch models are stored as `.pt2`. A Hugging Face
    text-encoder folder runs the text handler (`edgeslim.nlp`), with `task` defaulting to `sentences`. An ONNX
    file or a PyTorch model with `inputs` (an .npz; ONNX: one array per model input, samples on axis 0) and no
    labels: the original model is the teacher; every stage records its fidelity on a held-out split of the
    inputs. The model's kind is found first (`model_kind`), then the recipe is checked against it (every pass
    must take that kind), then the data. Training runs on `accelerator` (`edgeslim.accelerator`; recorded in
    run.json); export and measurements do not depend on it."""
    from edgeslim.run.options import run_options

    o = run_options(options, {**fields, **({"device": device} if device is not None else {})})
    if not isinstance(model, nn.Module) and _is_recipe(model) and not _is_recipe(recipe):
        raise EdgeslimError(f"api.run takes the model first: api.run(recipe, model, task, out); got the recipe "
                            f"'{model}' first")
    both = ("give --task (labels) or --inputs (no labels: the original model is the teacher), not both")
    if inputs is not None and task is not None:
        raise EdgeslimError(both)
    with o.accelerated():
        if isinstance(model, nn.Module):
            from edgeslim.pipeline import run_module_recipe

            if task is None and inputs is None:
                raise EdgeslimError("api.run on a module needs a task (labels) or inputs (an .npz of samples)")
            r = load_recipe(recipe, kind="pytorch")
            t = task if isinstance(task, Task) or task is None else load_task(str(task), seed=o.seed)
            return run_module_recipe(r, model, t, inputs, out, o, task_spec="" if isinstance(task, Task) else
                                     str(task or ""))
        return _run_file(Path(model), recipe, task, Path(out), o, inputs)


def _is_recipe(x: object) -> bool:
    """`x` names a recipe (a .yaml path or a built-in recipe's name that is not a path on disk)."""
    if not isinstance(x, (str, Path)):
        return False
    p = Path(x)
    return p.suffix in (".yaml", ".yml") or (isinstance(x, str) and x in builtin_recipes() and not p.exists())


def _run_file(model_dir: Path, recipe: Path | str, task: str | Path | Task | None, out: Path, o: RunOptions,
              inputs: Path | None) -> dict:
    """`run` on a model given by its path (module docstring of `edgeslim.pipeline`)."""
    from edgeslim.nlp.text import is_text_task
    from edgeslim.pipeline import run_recipe

    kind = model_kind(model_dir)
    r = load_recipe(recipe, kind=kind)
    task_spec = "" if isinstance(task, Task) or task is None else str(task)
    if kind == "onnx":
        from edgeslim.onnxkit.load import read_onnx
        from edgeslim.pipeline import run_onnx_recipe

        read_onnx(model_dir)  # the model is checked before the data
        if inputs is None and task is None:
            raise EdgeslimError(f"{model_dir}: an ONNX file needs its inputs: --inputs X.npz (one array per model "
                                "input, samples on axis 0; no labels needed), e.g. edgeslim run "
                                "edgeslim/recipes/any-model.yaml --model M.onnx --inputs X.npz --out R")
        if isinstance(task, Task):
            raise EdgeslimError(f"{model_dir}: an ONNX run takes its task by name or path, not a Task object")
        return run_onnx_recipe(r, model_dir, Path(inputs) if inputs else None, out, o, task=task_spec or None)
    if inputs is not None:
        from edgeslim.pipeline import run_inputs_recipe

        return run_inputs_recipe(r, model_dir, Path(inputs), out, o)
    if kind == "text":
        from edgeslim.nlp import require_transformers

        require_transformers()
        from edgeslim.nlp.text import load_text_task
        from edgeslim.text_pipeline import run_text_recipe

        spec = task_spec or "sentences"
        return run_text_recipe(r, model_dir, load_text_task(spec, o.seed), out, o, task_spec=spec)
    if task is None:
        raise EdgeslimError("--task is required for this model (a built-in task name or a path to data); "
                            "only text encoders (Hugging Face folders) default to 'sentences'")
    if task_spec and is_text_task(task_spec):
        raise EdgeslimError(f"task '{task}' is a text task, for text encoders (a Hugging Face folder with "
                            f"config.json); {model_dir} is not one")
    t = task if isinstance(task, Task) else load_task(task_spec, seed=o.seed)
    return run_recipe(r, model_dir, t, out, o, task_spec=task_spec)


def model_kind(model: Path) -> str:
    """The kind of model at `model` (`passes.SOURCE_KINDS`): `text` (a Hugging Face text-encoder folder),
    `onnx` (a .onnx file), `pytorch` (a .pt2 program, a state dict, a pickle), else `zoo` (an edgeslim model
    folder; checked when loaded)."""
    from edgeslim.nlp import is_text_encoder_folder

    p = Path(model)
    if is_text_encoder_folder(p):
        return "text"
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in (".pt2", ".pt", ".pth", ".safetensors") and p.is_file():
        return "pytorch"
    return "zoo"


def compress(
    model: nn.Module, config: Any, task: str | Task, *, spec: dict | None = None,
    finetune: TrainConfig | None = None, work_dir: Path | None = None, seed: int = 0, quiet: bool = True,
) -> Any:  # -> edgeslim.passes.PassResult
    """Apply one pass to an in-memory model, the pass chosen by its config's type (torchao style):
    `compress(net, StructuredPrune(ratio=0.5), "digits", spec=spec)`.

    `spec` is the model's architecture spec (from `load_model`; needed by passes that change structure,
    e.g. low-rank or depth pruning); `finetune` the fine-tuning settings of passes that fine-tune without
    their own (default `TrainConfig()`). Files a pass writes (e.g. the INT8 ONNX of `QuantizeInt8`, the
    `.eshare` of `EntropyCode`) go to `work_dir` (default: a new temporary folder that is kept). Returns the
    pass's `PassResult`: the new model (None when it became ONNX-only: see `.onnx`), spec, notes.
    """
    from edgeslim.passes import RunContext, pass_for_config

    info = pass_for_config(config)
    t = load_task(task, seed=seed) if isinstance(task, str) else task
    spec = spec or {"format": 1, "arch": "custom", "input_shape": list(t.input_shape),
                    "num_classes": t.num_classes, "kwargs": {}, "edits": []}
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="edgeslim-compress-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = copy.deepcopy(model).eval()
    prev_onnx = None
    if info.consumes == "onnx":
        from edgeslim.deploy.export import export_onnx

        prev_onnx = work / "input.onnx"
        export_onnx(model, t.input_shape, prev_onnx)
    ctx = RunContext(stage_dir=work, spec=spec, finetune=finetune or TrainConfig(), prev_onnx=prev_onnx,
                     seed=seed, quiet=quiet, teacher_loader=lambda: copy.deepcopy(teacher))
    res = info.fn(model, t, config, ctx)
    if res.store_sparse and res.model is not None:  # as the pipeline does: the sparse file from one export
        from edgeslim.deploy.export import export_onnx
        from edgeslim.formats.sparse import write_sparse_stage

        export_onnx(res.model, t.input_shape, work / "model.onnx")
        res.notes.update(write_sparse_stage(work / "model.onnx", work))
    return res


def optimize(cfg: OptimizeConfig) -> dict:
    """Optimise a third-party ONNX model (`edgeslim.onnxopt`, configured by `OptimizeConfig`): repair, try
    FP32/FP16/INT8 candidates, keep the fastest within tolerance that is not slower than the original and at
    least `cfg.min_shrink` times smaller (`cfg.prefer`: balanced | size | speed; `measure.decide`). The default
    tolerance (`Tolerance()`) is cosine >= 0.995 on every output, probability outputs (values in 0-1) within
    0.05 max abs error and single-score outputs on the same side of 0.5 for >= 98% of samples. `cfg.calib`: an
    .npz with one array per input name, used for calibration (one part) and the fidelity checks (the held-out
    rest) and the timing. Writes `cfg.out` unless refused; returns the full report.
    `api.OptimizeConfig(model=..., out=...)` lists every field once."""
    from edgeslim.onnxopt.run import optimize_onnx as run_optimize

    with interrupt.during(f"optimize {cfg.model}", "nothing was written; a rerun starts over"):
        return run_optimize(cfg)


def export(model: Path, fmt: str, out: Path, options: ExportOptions | None = None, *, task: str | None = None,
           inputs: Path | None = None, shapes: Sequence[str] = (), **fields: Any) -> dict:
    """Export a model folder to `onnx`, `tflite` (FP32 or full-integer INT8) or `c` (a .c/.h pair for TFLite
    Micro; also from a `.tflite` file), parity-checked against PyTorch on the samples of `task` or `inputs`
    (an .npz; also the INT8 calibration data when there is no task). How: `options` (`api.ExportOptions`:
    int8, calibration_samples, per_channel, force, min_arena, max_recompute, device, ...), or any of its fields
    as keywords (`int8=True, device="cortex-m4"`). With `device`: the exported file's fit and energy there
    (`fit`). `min_arena` (INT8 .tflite): rewrite for a smaller TFLite Micro arena, halos recomputing at most
    `max_recompute` of the MACs (`min_arena` in the summary). Returns the summary."""
    from edgeslim.deploy.artifacts import export_model
    from edgeslim.litert.options import export_options

    o = export_options(options, fields)
    res = export_model(Path(model), fmt.lower(), Path(out), o, task=task,  # type: ignore[arg-type]
                       inputs=inputs, shapes=shapes)
    if o.device is not None:
        written = Path(res.get("tflite") or res["path"]) if fmt.lower() == "c" else Path(res["path"])
        res["fit"] = check_fit(written, o.device, inputs=inputs, shapes=shapes)
    return res


def distill(teacher: Path, task: str, out: Path, cfg: Distill | None = None, *, quiet: bool = False,
            accelerator: str = "auto") -> dict:
    """Build a smaller student from the teacher's architecture (`cfg.width`, default 0.5; `cfg.depth`,
    default 1) or another zoo architecture (`Distill(student={"model": "gru", "hidden": 64})`; width/depth
    then do not apply) and train it with knowledge distillation (`cfg`: the `distill` pass's config, whose
    `train` block holds epochs, lr and the seed); saves it as a model folder in `out`. Returns student and
    teacher metrics. Training runs on `accelerator` (`edgeslim.accelerator`)."""
    import torch

    from edgeslim.distill.train import distill_model
    from edgeslim.models.student import build_student
    from edgeslim.passes.distill import Distill, kd_settings, student_base

    cfg = cfg or Distill()
    seed = cfg.train.seed
    t = load_task(task, seed=seed)
    tmodel, tspec = models.load_model(teacher)
    extras = [models.load_model(Path(p))[0] for p in cfg.teachers]
    torch.manual_seed(seed)
    student_net, spec = build_student(student_base(tspec, t, cfg), cfg.width, cfg.depth, cfg.student)
    ckpt = Path(out).parent / f".{Path(out).name}.distill-checkpoint.pt"  # beside the folder: resumes after a stop
    with accel.use(accelerator):
        hist = distill_model(student_net, [tmodel, *extras], t, cfg.train, kd_settings(cfg), quiet=quiet,
                             checkpoint=ckpt)
    m = {
        "teacher_test_accuracy": evaluate(tmodel, t.x_test, t.y_test),
        "test_accuracy": evaluate(student_net, t.x_test, t.y_test), "val_accuracy": hist["val_accuracy"],
        "teacher_params": count_params(tmodel)[0], "params": count_params(student_net)[0],
        "teacher_macs": count_macs(tmodel, t.input_shape), "macs": count_macs(student_net, t.input_shape),
        "student": spec["kwargs"],
    }
    models.save_model(out, student_net, spec, extra={"distill": cfg.model_dump(), "metrics": m})
    ckpt.unlink(missing_ok=True)
    m["arch"] = spec["arch"]
    return m


def unpack(file: Path, out: Path) -> dict:
    """Decode an entropy-coded weight-shared `.eshare` file into an ordinary model folder."""
    from edgeslim.formats.eshare import load_shared_model

    model, spec = load_shared_model(file)
    models.save_model(out, model, spec)
    return {"file": str(file), "file_bytes": Path(file).stat().st_size, "out": str(out), "arch": spec.get("arch")}


def sensitivity(model: Path, task: str, out: Path, mode: str = "unstructured",
                ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                target: float | None = None) -> dict:
    """Per-layer validation accuracy (0-1) with one layer pruned to each ratio; with `target`, the per-layer
    ratios that reach that overall ratio. Writes sensitivity.md/.json/.png into `out`."""
    from edgeslim.prune.sensitivity import allocate, sensitivity_curves, write_report

    if mode not in ("unstructured", "structured"):
        raise EdgeslimError(f"--mode: unknown mode '{mode}'; valid: structured, unstructured")
    rs = sorted(float(r) for r in ratios)
    if not rs or any(not 0 < r < 1 for r in rs):
        raise EdgeslimError(f"--ratios: each ratio must lie in (0, 1), got '{','.join(f'{r:g}' for r in ratios)}'")
    if target is not None and not 0 < target < 1:
        raise EdgeslimError(f"--target: must lie in (0, 1), got {target}")
    net, _ = models.load_model(model)
    t = load_task(task)
    curves = sensitivity_curves(net, t, rs, mode)
    alloc = allocate(curves, target) if target is not None else None
    files = write_report(out, curves, alloc)
    return {**curves, "allocation": alloc, "files": [str(f) for f in files]}


def quant_report(run: Path) -> dict[str, dict]:
    """{stage folder: its notes} for every quantized stage of a run (or one stage folder) that wrote a
    per-layer report: bits, weight-scale range, input scale and output SQNR (dB) per layer."""
    from edgeslim.report.quant import quantized_stages

    return quantized_stages(Path(run))


def search(job: SearchJob, log: Callable[[str, bool], None] = lambda msg, warn: print(msg, flush=True)) -> dict:
    """Hardware-aware search over compression recipes (Optuna; see `edgeslim.search`), configured by
    `api.SearchJob(model=..., task=..., device=..., max_energy="2mJ", ...)`. Several workers share one study
    through `job.storage`; a `job.worker` only runs trials. Otherwise waits for the others, fine-tunes the
    Pareto front fully and writes search.json and report.html into `job.out`. `log(message, is_warning)`
    gets the progress lines. Returns the summary (a worker: {"ran": trials it ran})."""
    from edgeslim.search.final import run_search

    cfg = job.study_config()
    with accel.use(job.accelerator):  # every trial's fine-tuning and the front's full fine-tuning
        return run_search(cfg, Path(job.out).resolve(), storage=job.storage, study_name=job.study_name,
                          worker=job.worker, wait=job.wait, top=job.top, log=log)


__all__ = ["train", "run", "compress", "measure", "check_fit", "plan_arena", "compile_model", "optimize", "export",
           "distill", "unpack", "sensitivity", "quant_report", "search", "list_models", "list_passes",
           "list_tasks", "list_devices", "list_recipes", "train_model", "TrainConfig",
           "OptimizeConfig", "MeasureOptions", "SearchJob", "Distill", "RunOptions", "ExportOptions",
           "load_model", "save_model", "write_json", "RECIPES"]
