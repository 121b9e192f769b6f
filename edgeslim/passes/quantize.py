"""Post-training static INT8 quantization with ONNX Runtime's tooling (QDQ format, calibrated on the task).

The stage becomes ONNX-only: the result is the QDQ model that ONNX Runtime runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.errors import EdgeslimError
from edgeslim.passes.base import PassConfig, PassResult, RunContext, register


class QuantizeInt8(PassConfig):
    calibration_samples: int = Field(256, ge=1)
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    # u8 activations with reduced-range s8 weights run fastest on AVX2 CPUs without VNNI.
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = True


class _Reader:
    """ONNX Runtime CalibrationDataReader over a numpy array, one sample per call."""

    def __init__(self, name: str, x: np.ndarray):
        self.name, self.x, self.i = name, x, 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_static_onnx(src: Path, dst: Path, calib: np.ndarray, cfg: QuantizeInt8) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inp = onnx.load(str(src)).graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    if any(dims) and tuple(dims) != tuple(calib.shape[1:]):
        raise EdgeslimError(
            f"calibration data has sample shape {tuple(calib.shape[1:])} but {src.name} expects {tuple(dims)}"
        )
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[cfg.method]
    quantize_static(
        str(pre), str(dst), _Reader(inp.name, calib.astype(np.float32)),
        quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
        activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=method,
    )
    pre.unlink(missing_ok=True)


@register("quantize_int8", QuantizeInt8, kind="onnx")
def quantize_int8(model: nn.Module | None, task: Task, cfg: QuantizeInt8, ctx: RunContext) -> PassResult:
    """Static INT8 post-training quantization (QDQ) of the previous stage's ONNX model."""
    assert ctx.prev_onnx is not None
    dst = ctx.stage_dir / "model.onnx"
    quantize_static_onnx(ctx.prev_onnx, dst, task.calibration(cfg.calibration_samples, ctx.seed), cfg)
    return PassResult(None, onnx=dst, notes={"format": f"QDQ {cfg.activation_type[0]}8s8"})
