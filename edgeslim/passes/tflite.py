"""The `tflite` stage: convert the current PyTorch model to LiteRT (`.tflite`, full-integer INT8 by
default, calibrated on the task) and record its TFLite Micro arena. It must be the recipe's last stage.

The stage folder keeps the usual `model.onnx` (the PyTorch model, measured in ONNX Runtime like every
stage) and adds `model.tflite` with `model.json` (its summary). The stage's metrics gain `tflite` (path
relative to the run folder), `tflite_precision`, `tflite_size_bytes`, `tflite_accuracy` (LiteRT
interpreter, test split) and `tflm_arena_bytes` (+ head/tail), also kept under `notes`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.measure.stage import STAGE_METRICS
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register

SUMMARY = "model.json"
TFLITE = "model.tflite"


class TfliteStage(PassConfig):
    int8: bool = True
    calibration_samples: int = Field(256, ge=1)
    per_channel: bool = True
    micro: bool = True  # run the model in TFLite Micro to record its arena


def _final_stage_name(stage_dir: Path) -> str:
    """`atomic_dir` works in `.NN_name.XXXX.tmp`; the stage becomes `NN_name`."""
    n = stage_dir.name
    return n[1:].rsplit(".", 2)[0] if n.startswith(".") and n.endswith(".tmp") else n


def _check_last(ctx: RunContext) -> None:
    from edgeslim.recipe import parse_recipe

    f = ctx.run_dir / "recipe.yaml"
    if not f.is_file():
        return
    steps = parse_recipe(f.read_text(), str(f)).steps
    if steps and steps[-1].name != "tflite":
        line = next(s.line for s in steps if s.name == "tflite")
        raise EdgeslimError(f"{f}: line {line}: the tflite stage must be the last pass of the recipe "
                            f"(found '{steps[-1].name}' after it)")


@register("tflite", TfliteStage, kind="torch")
def tflite(model: nn.Module | None, task: Task, cfg: TfliteStage, ctx: RunContext) -> PassResult:
    """Convert to LiteRT .tflite (INT8 by default) and record the TFLite Micro arena; the last stage."""
    from edgeslim.litert import require

    require("convert", "run", *(("micro",) if cfg.micro else ()))
    if model is None:
        raise EdgeslimError("the tflite stage needs the PyTorch model, but an earlier pass left an ONNX-only model "
                            "(e.g. quantize_int8); drop that pass: tflite quantizes to INT8 itself")
    _check_last(ctx)
    from edgeslim.litert.export import tflite_export

    path = ctx.stage_dir / TFLITE
    s = tflite_export(model, task.input_shape, path, int8=cfg.int8, task=task, check=task.x_test[:64],
                      calibration_samples=cfg.calibration_samples, seed=ctx.seed, micro=cfg.micro,
                      per_channel=cfg.per_channel)
    rel = f"stages/{_final_stage_name(ctx.stage_dir)}/{TFLITE}"
    s["path"] = rel
    write_json(ctx.stage_dir / SUMMARY, s)
    return PassResult(model, notes=_fields(s))


def _fields(s: dict) -> dict:
    arena = s.get("tflm_arena") or {}
    out = {
        "tflite": s["path"], "tflite_precision": s["precision"], "tflite_size_bytes": s["size_bytes"],
        "tflite_accuracy": s.get("accuracy"),
        "tflite_input": {k: s["input"][k] for k in ("dtype", "scale", "zero_point")},
        "tflite_parity": s.get("parity"),
    }
    if arena:
        out.update(tflm_arena_bytes=arena["total_bytes"], tflm_arena_head_bytes=arena["head_bytes"],
                   tflm_arena_tail_bytes=arena["tail_bytes"])
    return out


def _tflite_stage_metrics(onnx_path: Path, task: Task, metrics: dict) -> dict:
    """Lift the tflite stage's figures to the top level of its metrics (results.json)."""
    f = Path(onnx_path).parent / SUMMARY
    if not (Path(onnx_path).parent / TFLITE).is_file() or not f.is_file():
        return {}
    try:
        s = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    fields = _fields(s)
    return {k: v for k, v in fields.items() if k not in ("tflite_input", "tflite_parity")}


STAGE_METRICS.append(_tflite_stage_metrics)
