"""`tflite`: convert the current PyTorch model to LiteRT (`.tflite`, full-integer INT8 by default,
calibrated on the task) and record its TFLite Micro arena. Registered `must_be_last`: the recipe parser
refuses any pass after it.

The stage folder keeps the usual `model.onnx` (the PyTorch model, measured in ONNX Runtime like every
stage) and adds `model.tflite` with `model.json` (its summary). The stage's metrics gain `tflite` (path
relative to the run folder), `tflite_precision`, `tflite_size_bytes`, `tflite_accuracy` (LiteRT
interpreter, test split) and `tflm_arena_bytes` (+ head/tail), also kept under `notes`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json
from edgeslim.litert.export import TFLITE_FILE, tflite_export, tflite_fields
from edgeslim.litert.options import ExportOptions
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register


class TfliteStage(PassConfig):
    int8: bool = True
    calibration_samples: int = Field(256, ge=1)
    per_channel: bool = True
    micro: bool = True  # run the model in TFLite Micro to record its arena
    force: bool = False  # write a .tflite that misses the parity check (notes: tflite_parity_failed)
    min_arena: bool = False  # INT8: rewrite the file for a smaller TFLite Micro arena (edgeslim.litert.min_arena)
    max_recompute: float = Field(0.2, ge=0.0, le=10.0)  # min_arena: MACs patch halos may add (fraction of the model's)


@register("tflite", TfliteStage, consumes="torch", produces="torch", must_be_last=True)
def tflite(model: nn.Module | None, task: Task, cfg: TfliteStage, ctx: RunContext) -> PassResult:
    """Convert to LiteRT .tflite (INT8 by default) and record the TFLite Micro arena; the last stage."""
    from edgeslim.litert import require_litert

    require_litert("convert", "run", *(("micro",) if cfg.micro else ()))
    if model is None:  # the recipe parser refuses this order; a direct call may not
        raise EdgeslimError("the tflite stage needs the PyTorch model, but an earlier pass left an ONNX-only model "
                            "(e.g. quantize_int8); drop that pass: tflite quantizes to INT8 itself")
    path = ctx.stage_dir / TFLITE_FILE
    opts = ExportOptions(int8=cfg.int8, calibration_samples=cfg.calibration_samples, seed=ctx.seed, micro=cfg.micro,
                         per_channel=cfg.per_channel, force=cfg.force, min_arena=cfg.min_arena,
                         max_recompute=cfg.max_recompute)
    s = tflite_export(model, task.input_shape, path, opts, task=task, check=task.x_test[:64])
    s["path"] = f"stages/{ctx.stage_name}/{TFLITE_FILE}" if ctx.stage_name else str(path)
    write_json(path.with_suffix(".json"), s)
    notes = tflite_fields(s)
    if "min_arena" in s:
        m = s["min_arena"]
        notes["min_arena"] = {k: v for k, v in m.items() if not k.startswith("skyline")}
        notes["min_arena"]["plain_path"] = Path(m["plain_path"]).name  # beside model.tflite in the stage folder
        notes["min_arena"]["skyline_png"] = Path(m["skyline_png"]).name
    return PassResult(model, notes=notes)
