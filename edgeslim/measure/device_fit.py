"""Device fit: does a model fit a device? Flash for weights + runtime, RAM for the activation arena +
runtime; estimated latency and energy per inference. Also the per-stage deploy metrics of the pipeline.

Units: bytes, ms, mJ. The arena comes from the ONNX planner (`measure.arena.plan_arena`) unless a
runtime-recorded one is given (e.g. TFLite Micro's, from `edgeslim.litert`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.deploy.export import to_onnx
from edgeslim.devices import DEFAULT_DEVICE, Device, load_device
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.load import read_onnx
from edgeslim.untrusted import about


@dataclass
class FitReport:
    device: str
    weights_bytes: int  # stored weights (initializers / constants in their stored dtype)
    flash_bytes: int  # weights + the device's runtime code
    flash_available: int
    arena_bytes: int  # activation arena (planner or runtime-recorded)
    ram_bytes: int  # arena + the runtime's own RAM
    ram_available: int
    arena_source: str  # "planner" | "tflm" | ...
    fits_flash: bool
    fits_ram: bool
    latency_ms: float | None = None  # estimated on the device
    energy_mj: float | None = None
    energy_method: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.fits_flash and self.fits_ram

    def as_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


def fit_verdict(device: Device, weights_bytes: int, arena_bytes: int, arena_source: str = "planner") -> FitReport:
    """The fit verdict from sizes alone: weights + runtime_flash <= flash, arena + runtime_ram <= RAM."""
    flash = weights_bytes + device.runtime_flash_bytes
    ram = arena_bytes + device.runtime_ram_bytes
    r = FitReport(
        device=device.name, weights_bytes=weights_bytes, flash_bytes=flash, flash_available=device.flash_bytes,
        arena_bytes=arena_bytes, ram_bytes=ram, ram_available=device.sram_bytes, arena_source=arena_source,
        fits_flash=flash <= device.flash_bytes, fits_ram=ram <= device.sram_bytes,
    )
    if not r.fits_flash:
        r.reasons.append(f"flash: needs {flash} B (weights {weights_bytes} + runtime {device.runtime_flash_bytes}),"
                         f" device has {device.flash_bytes} B ({flash / device.flash_bytes:.2f}x)")
    if not r.fits_ram:
        r.reasons.append(f"RAM: needs {ram} B (arena {arena_bytes} + runtime {device.runtime_ram_bytes}), "
                         f"device has {device.sram_bytes} B ({ram / device.sram_bytes:.2f}x)")
    return r


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the stored constants: initializers and Constant nodes, in their stored dtype."""
    total = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    total += numpy_helper.to_array(a.t).nbytes
    return int(total)


def check_fit(model: str | Path, device: str | Path | Device, arena_bytes: int | None = None,
              arena_source: str = "planner", energy: bool = True) -> FitReport:
    """Fit of an ONNX file, an edgeslim model folder or (with `edgeslim[litert]`) a .tflite file."""
    dev = load_device(device)
    p = Path(model)
    if p.suffix == ".tflite":
        return _fit_tflite(p, dev)
    onnx_path, cleanup = to_onnx(p)
    try:
        with about(p):  # a broken model: one line naming it
            return _fit_onnx(onnx_path, dev, arena_bytes, arena_source, energy)
    finally:
        if cleanup:
            cleanup()


def _fit_onnx(onnx_path: Path, dev: Device, arena_bytes: int | None, arena_source: str, energy: bool) -> FitReport:
    from edgeslim.measure.arena import plan_arena
    from edgeslim.measure.energy import estimate_energy

    m = read_onnx(onnx_path)
    unknown: list[str] = []
    if arena_bytes is None:
        plan = plan_arena(m)
        arena_bytes, unknown = plan.arena_bytes, plan.unknown_tensors  # the file's own order
    r = fit_verdict(dev, weights_bytes(m), arena_bytes, arena_source)
    if unknown:
        r.reasons.append(f"arena is a lower bound: {len(unknown)} tensors of unknown shape "
                         f"({', '.join(unknown[:3])}{'...' if len(unknown) > 3 else ''})")
    if energy:
        e = estimate_energy(m, dev)
        r.latency_ms, r.energy_mj, r.energy_method = e.latency_ms, e.mj, e.method
    return r


def _fit_tflite(p: Path, dev: Device) -> FitReport:
    try:
        from edgeslim.litert.footprint import tflite_footprint  # type: ignore[import-not-found]
    except ImportError:
        raise EdgeslimError(f"{p}: fitting .tflite files needs the LiteRT extra: pip install 'edgeslim[litert]'"
                            ) from None
    fp = tflite_footprint(p)
    # flash = the whole .tflite file (weights + graph) + runtime; RAM = TFLite Micro's recorded arena
    return fit_verdict(dev, int(fp.get("model_bytes", fp.get("weights_bytes", 0))),
                   int(fp.get("tflm_arena_bytes", fp.get("arena_bytes", 0))),
                   str(fp.get("arena_method", "recorded:tflite-micro")))


def stage_deploy_metrics(onnx_path: Path, task: object = None, device: str | Path | Device | None = None) -> dict:
    """Deploy fields for one pipeline stage (cheap: planner + analytic counts, tens of ms):
    arena_bytes, naive_activation_bytes, flash_bytes, energy_mj, energy_method, deploy_device."""
    dev = load_device(device or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE)
    from edgeslim.measure.arena import plan_arena
    from edgeslim.measure.energy import energy_for

    m = read_onnx(onnx_path)
    try:
        plan = plan_arena(m, max_states=2000)
    except EdgeslimError as err:  # a graph the planner cannot size must not stop the pipeline
        return {"arena_bytes": None, "energy_mj": None, "deploy_device": dev.name, "deploy_note": str(err)}
    sample = None
    x = getattr(task, "x_test", None)
    if isinstance(x, np.ndarray) and len(x):
        sample = x[:1].astype(np.float32)
    e = energy_for(onnx_path, dev, sample=sample)
    wb = weights_bytes(m)
    return {
        "arena_bytes": plan.arena_bytes,
        "arena_bytes_reordered": plan.reordered_arena_bytes,
        "naive_activation_bytes": plan.naive_bytes,
        "weights_bytes": wb,
        "flash_bytes": wb + dev.runtime_flash_bytes,
        "energy_mj": round(e.mj, 6),
        "energy_method": e.method,
        "energy_latency_ms": None if e.latency_ms is None else round(e.latency_ms, 4),
        "deploy_device": dev.name,
    }
