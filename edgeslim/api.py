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
from edgeslim.measure.macs import count_macs, count_params
from edgeslim.recipe import load_recipe
from edgeslim.train import TrainConfig, evaluate, fit


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
    hist = fit(net, t, cfg, desc=f"train {model}", quiet=quiet, checkpoint=ckpt)
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


def run(recipe: Path, model_dir: Path, task: str | None, out: Path, seed: int = 0, quiet: bool = False,
        force: bool = False, trust_pickle: bool = False) -> dict:
    """Run a recipe on a trained model; writes results.json and report.md into `out`. A Hugging Face
    text-encoder folder runs the text pipeline (`edgeslim.nlp`), with `task` defaulting to `sentences`."""
    from edgeslim.nlp import is_text_encoder_folder
    from edgeslim.nlp.text import is_text_task
    from edgeslim.pipeline import run_recipe

    r = load_recipe(recipe)
    if is_text_encoder_folder(model_dir):
        from edgeslim.nlp import require

        require()
        from edgeslim.nlp.pipeline import run_text_recipe
        from edgeslim.nlp.text import load_text_task

        spec = task or "sentences"
        return run_text_recipe(r, model_dir, load_text_task(spec, seed), out, seed=seed, quiet=quiet, force=force,
                               task_spec=spec)
    if task is None:
        raise EdgeslimError("--task is required for this model (a built-in task name or a path to data); "
                            "only text encoders (Hugging Face folders) default to 'sentences'")
    if is_text_task(task):
        raise EdgeslimError(f"task '{task}' is a text task, for text encoders (a Hugging Face folder with "
                            f"config.json); {model_dir} is not one")
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
        with tempfile.TemporaryDirectory() as tmp:
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
    import onnx

    try:
        g = onnx.load(str(p)).graph
    except Exception as e:  # onnx raises DecodeError and others for corrupt files
        raise EdgeslimError(f"{p}: not a valid ONNX model ({type(e).__name__})") from None
    dims = g.input[0].type.tensor_type.shape.dim[1:]
    shape = tuple(d.dim_value for d in dims)
    if not all(shape):
        raise EdgeslimError(f"{p}: input '{g.input[0].name}' has unknown dimensions {shape}")
    return shape


def _synthetic_task(shape: tuple[int, ...]) -> Task:
    rng = np.random.default_rng(0)
    x = rng.random((8, *shape), dtype=np.float32)
    y = np.zeros(8, np.int64)
    return Task("synthetic", x, y, x, y, x, y, num_classes=1)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["train", "run", "measure", "write_json"]
