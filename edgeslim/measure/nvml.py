"""NVIDIA GPU energy through NVML (the `nvidia-ml-py` package, extra `edgeslim[nvml]`), imported lazily.

`nvmlDeviceGetTotalEnergyConsumption` gives millijoules since driver load (Volta and newer); where it
is not supported, `available()` is False. Units: J.
"""

from __future__ import annotations

from typing import Any


def _nvml() -> Any | None:
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver / no GPU
        return None
    return pynvml


def handles() -> list[Any]:
    nv = _nvml()
    if nv is None:
        return []
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        try:
            nv.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception:  # not supported on this GPU
            continue
        out.append(h)
    return out


def available() -> bool:
    return bool(handles())


def snapshot(hs: list[Any]) -> dict[str, int]:
    """Per-GPU total energy counters in mJ."""
    nv = _nvml()
    assert nv is not None
    return {f"gpu{i}": int(nv.nvmlDeviceGetTotalEnergyConsumption(h)) for i, h in enumerate(hs)}


def joules_between(start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    return {k: (end[k] - start[k]) * 1e-3 for k in start}
