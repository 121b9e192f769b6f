"""TensorFlow Lite Micro's interpreter, run on the host: the arena a microcontroller needs.

TFLite Micro plans every tensor into one arena before the first inference. Its arena has a *head*
(the non-persistent, planned section: activations and kernel scratch buffers, reused across layers)
and a *tail* (persistent: tensor metadata, node structures, quantization parameters, kernel state).
The recording allocator reports both after an inference; `head + tail` is the arena a firmware must
reserve with the same kernels (the host runs TFLite Micro's reference kernels; optimized kernels such
as CMSIS-NN may ask for a little more scratch, which lands in the head).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError
from edgeslim.litert import captured_fds, require_litert

_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_PART = re.compile(r"'([^']+)' used (\d+) bytes")
MAX_ARENA = 256 << 20


@dataclass(frozen=True)
class MicroArena:
    total_bytes: int
    head_bytes: int  # planned, non-persistent section (activations + scratch)
    tail_bytes: int  # persistent section (runtime structures)
    breakdown: dict[str, int] = field(default_factory=dict)  # tail allocations by kind

    def as_dict(self) -> dict:
        return asdict(self)


def parse_allocations(text: str) -> MicroArena:
    """Parse the lines `RecordingMicroAllocator` prints (`print_allocations`)."""
    found = {k: int(v) for k, v in _TOTAL.findall(text)}
    if not {"total", "head", "tail"} <= set(found):
        raise EdgeslimError(f"TFLite Micro did not report its arena (got: {text.strip()[:200]!r})")
    parts = {k: int(v) for k, v in _PART.findall(text)}
    return MicroArena(found["total"], found["head"], found["tail"], parts)


def _interpreter(data: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime  # imported inside captured_fds by the caller

    return runtime.Interpreter.from_bytes(data, arena_size=arena_size)


def _load(model: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), "model"
    p = Path(model)
    if not p.is_file():
        raise EdgeslimError(f"{p}: no such .tflite file")
    return p.read_bytes(), str(p)


class MicroModel:
    """A `.tflite` in the TFLite Micro interpreter (reference kernels), single input and output."""

    def __init__(self, model: str | Path | bytes, arena_size: int | None = None):
        require_litert("micro")
        self.data, self.where = _load(model)
        size = arena_size or max(1 << 20, 16 * len(self.data))
        last = ""
        while size <= MAX_ARENA:  # the arena given only has to be large enough; the recorded use is exact
            try:
                with captured_fds() as log:
                    self._it = _interpreter(self.data, size)
                break
            except (RuntimeError, ValueError) as e:
                last = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                text = (log[0] if log else "").lower()
                if "arena" not in text and "arena" not in last.lower() and "allocat" not in text:
                    raise EdgeslimError(f"{self.where}: TFLite Micro cannot run the model ({last}; "
                                        f"{text.strip().splitlines()[-1] if text.strip() else 'no log'})") from None
                size *= 4
        else:
            raise EdgeslimError(f"{self.where}: TFLite Micro needs more than {MAX_ARENA} bytes of arena ({last})")
        self.arena_given = size
        d_in, d_out = self._it.get_input_details(0), self._it.get_output_details(0)
        self.in_dtype, self.in_shape = np.dtype(d_in["dtype"]), tuple(int(s) for s in d_in["shape"])
        self.out_dtype = np.dtype(d_out["dtype"])
        self._invoked = False

    def invoke_raw(self, q: np.ndarray) -> np.ndarray:
        """One inference on an input already in the model's dtype and shape; returns the raw output."""
        try:
            with captured_fds():
                self._it.set_input(np.ascontiguousarray(q, dtype=self.in_dtype).reshape(self.in_shape), 0)
                self._it.invoke()
        except (RuntimeError, ValueError) as e:
            raise EdgeslimError(f"{self.where}: TFLite Micro inference failed ({str(e).strip()[:200]})") from None
        self._invoked = True
        return np.array(self._it.get_output(0))

    def arena(self) -> MicroArena:
        """The recorded arena; runs one inference on zeros first if none has run yet."""
        if not self._invoked:
            self.invoke_raw(np.zeros(self.in_shape, self.in_dtype))
        with captured_fds() as log:
            self._it.print_allocations()
        return parse_allocations(log[0])


def tflm_arena(model: str | Path | bytes) -> MicroArena:
    """The exact TFLite Micro arena of a `.tflite` (path or bytes), recorded by running it once."""
    return MicroModel(model).arena()


__all__ = ["MicroArena", "MicroModel", "parse_allocations", "tflm_arena"]
