"""Does a model fit a device? The one fit verdict: flash for the stored weights + the runtime's code, RAM for
the activation arena + the runtime's own RAM. Every command and every model kind (ONNX, model folder,
.tflite) goes through `device_fit`, so the keys are the same everywhere. Units: bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.devices import Device
from edgeslim.onnxkit.graph import graphs


@dataclass
class FitReport:
    device: str
    weights_bytes: int  # stored weights (initializers / constants in their stored dtype; a .tflite: the file)
    flash_bytes: int  # weights + the device's runtime code
    flash_available: int
    arena_bytes: int  # activation arena (planner or runtime-recorded)
    ram_bytes: int  # arena + the runtime's own RAM
    ram_available: int
    arena_source: str  # "planner" | "recorded:tflite-micro" | "given"
    fits_flash: bool
    fits_ram: bool
    runtime_flash_bytes: int = 0
    runtime_ram_bytes: int = 0
    latency_ms: float | None = None  # estimated on the device
    energy_mj: float | None = None
    energy_method: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.fits_flash and self.fits_ram

    def as_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


def device_fit(device: Device, weights_bytes: int, arena_bytes: int, arena_source: str = "planner") -> FitReport:
    """The fit verdict from sizes alone: weights + runtime_flash <= flash, arena + runtime_ram <= RAM."""
    flash = weights_bytes + device.runtime_flash_bytes
    ram = arena_bytes + device.runtime_ram_bytes
    r = FitReport(
        device=device.name, weights_bytes=weights_bytes, flash_bytes=flash, flash_available=device.flash_bytes,
        arena_bytes=arena_bytes, ram_bytes=ram, ram_available=device.sram_bytes, arena_source=arena_source,
        fits_flash=flash <= device.flash_bytes, fits_ram=ram <= device.sram_bytes,
        runtime_flash_bytes=device.runtime_flash_bytes, runtime_ram_bytes=device.runtime_ram_bytes,
    )
    if not r.fits_flash:
        r.reasons.append(f"flash: needs {flash} B (weights {weights_bytes} + runtime {device.runtime_flash_bytes}),"
                         f" device has {device.flash_bytes} B ({flash / device.flash_bytes:.2f}x)")
    if not r.fits_ram:
        r.reasons.append(f"RAM: needs {ram} B (arena {arena_bytes} + runtime {device.runtime_ram_bytes}), "
                         f"device has {device.sram_bytes} B ({ram / device.sram_bytes:.2f}x)")
    return r


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the stored constants in their stored dtype: initializers and tensor-valued Constant nodes,
    in the main graph and inside If/Loop/Scan bodies (some exports keep every weight there)."""
    total = 0
    for g in graphs(model.graph):
        total += sum(_nbytes(t) for t in g.initializer)
        for n in g.node:
            if n.op_type == "Constant":
                total += sum(_nbytes(a.t) for a in n.attribute if a.name == "value" and a.HasField("t"))
    return int(total)


def _nbytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:  # not loaded: count from the declared shape
        size = int(np.prod(list(t.dims), dtype=np.int64))
        return size * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(numpy_helper.to_array(t).nbytes)
