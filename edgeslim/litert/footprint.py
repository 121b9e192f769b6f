"""Footprint of a `.tflite` on a device: flash = model bytes + the runtime's code (from the device
profile); RAM = the TFLite Micro arena (recorded, head + tail) + the runtime's other RAM (profile).
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.litert.micro import tflm_arena


def tflite_footprint(path: str | Path) -> dict:
    """Model bytes, the TFLite Micro arena (total, head, tail) and the operators of a `.tflite`."""
    from edgeslim.litert.carray import op_names

    p = Path(path)
    data = p.read_bytes()
    arena = tflm_arena(data)
    return {
        "model": str(p), "model_bytes": len(data), "tflm_arena_bytes": arena.total_bytes,
        "tflm_arena_head_bytes": arena.head_bytes, "tflm_arena_tail_bytes": arena.tail_bytes,
        "ops": op_names(data), "arena_method": "recorded:tflite-micro",
    }


def tflite_fit(path: str | Path, device: str | Path | object, footprint: dict | None = None) -> dict:
    """Does the model fit the device? Flash: model + runtime code; RAM: arena + runtime RAM."""
    from edgeslim.devices import load_device

    dev = load_device(device)  # type: ignore[arg-type]
    fp = footprint or tflite_footprint(path)
    flash_need = fp["model_bytes"] + dev.runtime_flash_bytes
    ram_need = fp["tflm_arena_bytes"] + dev.runtime_ram_bytes
    flash_ok, ram_ok = flash_need <= dev.flash_bytes, ram_need <= dev.sram_bytes
    return {
        **fp, "device": dev.name,
        "flash_bytes": flash_need, "flash_limit_bytes": dev.flash_bytes,
        "runtime_flash_bytes": dev.runtime_flash_bytes,
        "ram_bytes": ram_need, "ram_limit_bytes": dev.sram_bytes, "runtime_ram_bytes": dev.runtime_ram_bytes,
        "fits_flash": flash_ok, "fits_ram": ram_ok, "fits": flash_ok and ram_ok,
        "verdict": "fits" if flash_ok and ram_ok else "does not fit: " + " and ".join(
            w for w, ok in (("flash", flash_ok), ("RAM", ram_ok)) if not ok),
    }


__all__ = ["tflite_footprint", "tflite_fit"]
