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
own comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from torch import nn

from edgeslim import accelerator, interrupt, models, resources, runlock
from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.devices import DEFAULT_DEVICE, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.formats.sparse import write_sparse_stage
from edgeslim.fsutil import atomic_dir, write_json, write_text
from edgeslim.measure.core import Measurer
from edgeslim.measure.stage import device_metrics, measure_stage
from edgeslim.measure.together import time_stages
from edgeslim.passes import PASSES, RunContext
from edgeslim.recipe import Recipe
from edgeslim.report.results import write_results

RESUME = "finished stages are kept"
RESULT_FIELDS = ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes", "latency_ms_p50", "onnx")


def run_recipe(
    recipe: Recipe, model_dir: Path, task: Task, out: Path, *, seed: int = 0, quiet: bool = False,
    force: bool = False, trust_pickle: bool = False, task_spec: str = "", device: str | None = None,
    threads: int = 1, report: bool = True,
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
    model, spec = models.load_model(model_dir, trust_pickle=trust_pickle)
    if spec.get("arch") == "pickle":
        spec["input_shape"] = list(task.input_shape)
    _check_input(spec, task, model_dir)
    resources.check_recipe(list(recipe.steps), recipe.finetune, model, task.input_shape, len(task.x_train))
    runlock.check_claim(out, ident, force)
    with runlock.hold(out):
        before = runlock.recorded(out, "device")
        record = {"accelerator": accelerator.describe()}  # where training runs: not the identity
        if runlock.claim(out, ident, force, record) and before not in (None, dev):  # a failed retry keeps the device
            _log(quiet, f"device {before} -> {dev}: re-measuring the device figures of finished stages")
        results = _run_stages(recipe, model, spec, task, out, ident, seed, quiet, dev, threads, report)
        runlock.claim(out, ident, False, {**record, "device": dev})  # finished: the device its figures are for
        return results


def _run_stages(recipe: Recipe, model: nn.Module, spec: dict, task: Task, out: Path, ident: dict, seed: int,
                quiet: bool, dev: str, threads: int, report: bool = True) -> dict:
    copy_recipe(out, recipe)
    dev_name = load_device(dev).name

    def teacher() -> nn.Module:
        return models.load_model(out / "stages" / "00_baseline")[0]

    ctx = RunContext(
        stage_dir=out, spec=spec, finetune=recipe.finetune, seed=seed, quiet=quiet,
        teacher_loader=teacher if spec.get("arch") != "pickle" else (lambda: model), measure=Measurer(threads, device=dev),
    )
    stages: list[dict] = []
    count_model: nn.Module | None = model
    current: nn.Module | None = model
    names = ["baseline"] + [s.name for s in recipe.steps]
    for i, name in enumerate(names):
        folder = out / "stages" / f"{i:02d}_{name}"
        if (folder / "metrics.json").exists():  # finished earlier: resume from it
            metrics = json.loads((folder / "metrics.json").read_text())
            _log(quiet, f"[{name}] done earlier, resuming from {folder.name}")
            if (folder / models.io.WEIGHTS).exists():
                current, ctx.spec = models.load_model(folder)
                count_model = current
            else:
                current = None
            ctx.carry = metrics.get("carry", {})
            ctx.prev_onnx = folder / "model.onnx"
            if metrics.get("deploy_device") != dev_name:  # measured for another device: re-measure those figures
                metrics.update(device_metrics(folder / "model.onnx", task, dev))
                write_json(folder / "metrics.json", metrics)
            stages.append(metrics)
            continue
        t0 = time.perf_counter()
        with atomic_dir(folder) as tmp, interrupt.during(f"stage {folder.name} of {out}", RESUME):
            ctx.stage_dir, ctx.stage_name = tmp, folder.name
            notes: dict = {}
            size_path = None
            onnx_path = tmp / "model.onnx"
            if i == 0:
                result_model, result_onnx = current, None
            else:
                step = recipe.steps[i - 1]
                info = PASSES[name]
                _log(quiet, f"[{name}] running (recipe line {step.line})")
                res = info.fn(current, task, step.config, ctx)
                result_model, result_onnx = res.model, res.onnx
                ctx.spec = res.spec or ctx.spec
                ctx.carry = {**ctx.carry, **res.carry}
                notes = res.notes
                if res.artifact is not None:
                    size_path = res.artifact
                if info.produces == "onnx" and result_onnx is None:
                    raise AssertionError(f"onnx pass {name} returned no ONNX model")
            if result_model is not None:
                models.save_model(tmp, result_model, ctx.spec)
                count_model = result_model
            if result_onnx is None:
                assert result_model is not None
                notes.update(export_onnx(result_model, task.input_shape, onnx_path, check=task.x_test[:64]))
            elif result_onnx != onnx_path:
                shutil.copyfile(result_onnx, onnx_path)
            if i > 0 and res.store_sparse:  # from the stage's one export
                notes.update(write_sparse_stage(onnx_path, tmp))
            metrics = {"name": name, **measure_stage(onnx_path, task, count_model, size_path, threads=threads,
                                                      device=dev, predictions=tmp / "predictions.npz")}
            metrics["onnx"] = str((folder / "model.onnx").relative_to(out))
            metrics["seconds"] = round(time.perf_counter() - t0, 2)
            metrics["notes"] = notes
            metrics["carry"] = ctx.carry
            write_json(tmp / "metrics.json", metrics)
        current = result_model
        ctx.prev_onnx = folder / "model.onnx"
        stages.append(metrics)
        _log(quiet, f"[{name}] accuracy {metrics['accuracy']:.4f}  size {metrics['size_bytes']} B  "
             f"p50 {metrics['latency_ms_p50']:.3f} ms")
    time_stages(out, stages, task, recipe.batches, ctx.measure)  # the table's latencies, all stages in one loop
    results = {"model": ident["model"], "task": task.summary(), "recipe": recipe.source, "device": dev_name,
               "stages": stages}
    if report:
        from edgeslim.measure.stage_compare import compare_stages

        compare_stages(out, stages, task)
    write_results(out, results)
    if report:
        from edgeslim.report.run_html import write_run_html

        write_run_html(out, results)
    return results


def _check_input(spec: dict, task: Task, model_dir: Path) -> None:
    want = tuple(spec.get("input_shape", ()))
    if want and want != task.input_shape:
        raise EdgeslimError(
            f"{model_dir}: model expects inputs of shape {want} but task '{task.name}' has {task.input_shape}"
        )
    nc = spec.get("num_classes")
    if nc and nc != task.num_classes:
        raise EdgeslimError(
            f"{model_dir}: model has {nc} classes but task '{task.name}' has {task.num_classes}"
        )


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


def copy_recipe(out: Path, recipe: Recipe) -> None:
    write_text(out / "recipe.yaml", recipe.text)
