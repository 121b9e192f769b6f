"""The few functions a Python user calls. The CLI is a thin layer over these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim import models
from edgeslim.data import Task, load_task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.guard import TrainingDiverged
from edgeslim.measure.macs import count_macs, count_params
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, evaluate, fit
from edgeslim.untrusted import about


def train(
    model: str, task: str | Task, out: Path, cfg: TrainConfig | None = None, quiet: bool = False,
    **model_kwargs: Any,
) -> dict:
    """Train a zoo model on a task and save it as an edgeslim model folder. Returns its metrics."""
    t = load_task(task, seed=(cfg.seed if cfg else 0)) if isinstance(task, str) else task
    cfg = cfg or TrainConfig()
    spec = models.make_spec(model, t.input_shape, t.num_classes, **model_kwargs)
    import torch

    torch.manual_seed(cfg.seed)
    net = models.build_model(spec)
    out = Path(out)
    ckpt = out.parent / f".{out.name}.train-checkpoint.pt"  # beside the folder: resumes a killed training
    try:
        hist = fit(net, t, cfg, desc=f"train {model}", quiet=quiet, checkpoint=ckpt)
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


def run(recipe: Path, model_dir: Path, task: str, out: Path, seed: int = 0, quiet: bool = False,
        force: bool = False, trust_pickle: bool = False) -> dict:
    """Run a recipe on a trained model; writes results.json and report.md into `out`."""
    from edgeslim.pipeline import run_recipe

    r = load_recipe(recipe)
    t = load_task(task, seed=seed)
    return run_recipe(r, model_dir, t, out, seed=seed, quiet=quiet, force=force, trust_pickle=trust_pickle,
                      task_spec=task)


def measure(paths: list[Path], task: str | None = None, threads: int = 1, runs: int = 200,
            device: str | None = None, batch: int | None = None, deploy: bool = False) -> list[dict]:
    """Measure models (edgeslim model folders or ONNX files): size, counts, latency, accuracy with a task.

    With `deploy` (or a `device`/`batch`): PyTorch eager latency beside ONNX Runtime, latency at `batch`,
    activation arena, flash, fit on `device` (default: this host), energy per inference (measured or
    estimated, labelled) and process peak RSS (`edgeslim.deploy.bench.deploy_extras`)."""
    import tempfile

    from edgeslim.deploy.export import export_onnx
    from edgeslim.measure.stage import measure_stage

    t = load_task(task) if task else None
    out = []
    for p in paths:
        p = Path(p)
        if p.suffix == ".tflite" and p.is_file():  # LiteRT + TFLite Micro (edgeslim[litert])
            from edgeslim.litert.measure import measure_tflite

            out.append(measure_tflite(p, t, runs=runs, threads=threads))
            continue
        with tempfile.TemporaryDirectory() as tmp, about(p):  # a broken model: one line naming it
            if p.is_dir():
                net, spec = models.load_model(p)
                shape = tuple(spec["input_shape"])
                onnx_path = Path(tmp) / "model.onnx"
                export_onnx(net, shape, onnx_path)
                size_path: Path | None = p / models.io.WEIGHTS
            elif p.suffix == ".onnx" and p.is_file():
                net, onnx_path, size_path = None, p, None
                shape = _onnx_input_shape(p)
            else:
                raise EdgeslimError(f"{p}: not an edgeslim model folder, .onnx or .tflite file")
            if t is not None and tuple(t.input_shape) != tuple(shape):
                raise EdgeslimError(f"{p}: the model takes inputs of shape {tuple(shape)} but task '{t.name}' "
                                    f"has {tuple(t.input_shape)}")
            task_for = t or _synthetic_task(shape)
            m = measure_stage(onnx_path, task_for, net, size_path, latency_runs=runs, threads=threads)
            if t is None:
                m["accuracy"] = None
            if deploy or device or batch:
                from edgeslim.deploy.bench import deploy_extras

                m.update(deploy_extras(onnx_path, net, shape, device, threads=threads, runs=runs, batch=batch))
            out.append({"name": str(p), **m})
    return out


def _onnx_input_shape(p: Path) -> tuple[int, ...]:
    from edgeslim.untrusted import check_onnx_file

    g = check_onnx_file(p).graph  # corrupt files and external data outside the folder: one line
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not inputs:
        raise EdgeslimError(f"{p}: the model has no inputs to feed")
    batch = inputs[0].type.tensor_type.shape.dim[:1]
    if batch and batch[0].HasField("dim_value") and batch[0].dim_value > 1:
        raise EdgeslimError(f"{p}: input '{inputs[0].name}' has a fixed batch of {batch[0].dim_value}; measure "
                            "runs one sample at a time: export the model with batch 1 or a dynamic batch")
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    shape = tuple(d.dim_value for d in dims)
    if not all(shape):
        raise EdgeslimError(f"{p}: input '{inputs[0].name}' has unknown dimensions {shape}")
    return shape


def _synthetic_task(shape: tuple[int, ...]) -> Task:
    rng = np.random.default_rng(0)
    x = rng.random((8, *shape), dtype=np.float32)
    y = np.zeros(8, np.int64)
    return Task("synthetic", x, y, x, y, x, y, num_classes=1)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["train", "run", "measure", "write_json"]
