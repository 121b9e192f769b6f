"""The LiteRT interpreter (XNNPACK on CPU) over a `.tflite` file: float in, float out.

A full-integer model has int8 inputs and outputs; `TensorInfo.quantize` / `dequantize` apply the scale
and zero point recorded in the file, so callers always pass and get float arrays in the task's layout
(channels first, as the PyTorch model had them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.litert import captured_fds, require_litert


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, int8, ...
    scale: float  # 0.0 for a float tensor
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8", "int16") and self.scale > 0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float -> the tensor's dtype (round to nearest, saturate); float tensors pass through."""
        if not self.quantized:
            return np.asarray(x, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(x, np.float32) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.asarray(q, np.float32)
        return ((np.asarray(q, np.float32) - self.zero_point) * self.scale).astype(np.float32)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _info(d: dict) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(str(d["name"]), tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name,
                      float(scale), int(zp))


class LiteRTModel:
    """One `.tflite` model in the LiteRT interpreter, batch 1, single input and output."""

    def __init__(self, path: str | Path, threads: int = 1):
        require_litert("run")
        with captured_fds():
            from ai_edge_litert.interpreter import Interpreter
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeslimError(f"{self.path}: no such .tflite file")
        try:
            with captured_fds():
                self._it = Interpreter(model_path=str(self.path), num_threads=threads)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgeslimError(f"{self.path}: LiteRT cannot load the model ({msg})") from None
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise EdgeslimError(f"{self.path}: expected one input and one output, got {len(ins)} and {len(outs)}")
        self.input, self.output = _info(ins[0]), _info(outs[0])
        self._in_idx, self._out_idx = ins[0]["index"], outs[0]["index"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.input.shape[1:]

    def ops(self) -> list[str]:
        return [o["op_name"] for o in self._it._get_ops_details()]

    def run_once(self, q: np.ndarray) -> None:
        """One inference on an already-quantized batch-1 input, output left in the interpreter (for timing)."""
        self._it.set_tensor(self._in_idx, q)
        self._it.invoke()

    def invoke_raw(self, q: np.ndarray) -> np.ndarray:
        """One inference on an already-quantized batch-1 input; returns the raw output."""
        self.run_once(q)
        return self._it.get_tensor(self._out_idx).copy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float outputs for float inputs `(N, *sample_shape)`, one sample at a time."""
        x = np.asarray(x, np.float32)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise EdgeslimError(
                f"{self.path}: model expects samples of shape {self.sample_shape}, data has {tuple(x.shape[1:])}"
            )
        outs = [self.dequantize_out(self.invoke_raw(self.input.quantize(x[i : i + 1]))) for i in range(len(x))]
        return np.concatenate(outs) if outs else np.zeros((0, *self.output.shape[1:]), np.float32)

    def dequantize_out(self, q: np.ndarray) -> np.ndarray:
        return self.output.dequantize(q)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(x).argmax(1) == np.asarray(y)).mean())


__all__ = ["LiteRTModel", "TensorInfo"]
