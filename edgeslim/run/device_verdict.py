"""Per-stage device verdict for a run: does the stage fit the device (flash, arena), what does one
inference cost there (latency and energy, *estimated* from the profile, with the per-layer breakdown),
and how long a battery lasts at the default rate (`measure.battery`, also estimated).

The device is the run's (`EDGESLIM_DEVICE`, as the stage metrics use) or, when that is this host, the
reference microcontroller `cortex-m4`: every model "fits" a workstation, so the host verdict says nothing.
Units: bytes, ms, mJ, uJ (per-layer), days.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeslim.devices import DEFAULT_DEVICE, Device, load_device
from edgeslim.errors import EdgeslimError

REFERENCE_MCU = "cortex-m4"


def verdict_device(stages: list[dict]) -> Device:
    name = next((s.get("deploy_device") for s in stages if s.get("deploy_device")), None)
    name = name or os.environ.get("EDGESLIM_DEVICE") or DEFAULT_DEVICE
    return load_device(REFERENCE_MCU if name == "host" else name)


def stage_device_verdict(onnx_path: Path, device: Device) -> dict:
    """The `device_verdict` of one stage (see the module docstring)."""
    from edgeslim.measure.battery import for_device
    from edgeslim.measure.core import measure_model
    from edgeslim.measure.energy import estimate_energy

    m = measure_model(onnx_path, device=device, latency=False)  # the one fit verdict, at the model's inputs
    r = m.fit
    if r is None:
        raise EdgeslimError(f"{onnx_path}: no fit verdict ({m.arena.get('arena_note', 'no arena')})")
    if Path(onnx_path).suffix == ".tflite":  # the file that ships: its own operators at their precision
        from edgeslim.measure.energy import estimate_from_counts
        from edgeslim.measure.tflite_counts import count_tflite

        e = estimate_from_counts(count_tflite(onnx_path), device)
        e.method += " (.tflite operators)"
    else:
        e = estimate_energy(onnx_path, device)
    out = {
        "device": device.name, "of": Path(onnx_path).name, "fits": r.fits, "fits_flash": r.fits_flash, "fits_ram": r.fits_ram,
        "weights_bytes": r.weights_bytes, "flash_bytes": r.flash_bytes, "flash_available": r.flash_available,
        "arena_bytes": r.arena_bytes, "ram_bytes": r.ram_bytes, "ram_available": r.ram_available,
        "latency_ms": None if e.latency_ms is None else round(e.latency_ms, 4), "energy_mj": round(e.mj, 6),
        "dynamic_mj": round(e.dynamic_mj or 0.0, 6), "static_mj": round(e.static_mj or 0.0, 6),
        "energy_method": e.method, "reasons": r.reasons,
        "energy_layers": [{"layer": b["name"], "op": b["op"], "precision": b["precision"], "macs": b["macs"],
                           "compute_uj": round(b["compute_uj"], 6), "memory_uj": round(b["memory_uj"], 6),
                           "static_uj": round(b["static_uj"], 6)} for b in e.breakdown],
    }
    if e.latency_ms:
        try:
            life = for_device(e.mj, e.latency_ms, device, energy_method=e.method)
        except EdgeslimError:  # a rate the model cannot keep up with: no lifetime, said in the note
            life = None
            out["battery_note"] = (f"battery life at 1/s: not sustainable (one inference takes {e.latency_ms:.3g} ms; "
                                   f"at most {1e3 / e.latency_ms:.3g} inferences/s, estimated)")
        if life is not None:
            out["battery"] = {"battery": life.battery, "rate": life.rate, "rest_mode": life.rest_mode,
                              "average_power_mw": round(life.average_power_mw, 6),
                              "lifetime_days": round(life.lifetime_days, 3), "method": life.method}
    return out


def add_device_verdicts(run_dir: Path, stages: list[dict]) -> Device:
    """Add `device_verdict` to every stage that has an ONNX model; returns the device used."""
    dev = verdict_device(stages)
    for s in stages:
        tfl = s.get("tflite") or (s.get("notes") or {}).get("tflite")  # a `tflite` stage ships its .tflite
        path = run_dir / tfl if tfl and (run_dir / tfl).is_file() else run_dir / s["onnx"] if s.get("onnx") else None
        if path is not None and path.is_file():
            try:
                s["device_verdict"] = stage_device_verdict(path, dev)
            except EdgeslimError as err:  # a graph the planner or counter cannot size: say so, keep the run
                s["device_verdict_note"] = str(err)
    return dev
