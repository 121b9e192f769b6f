"""Decisions that depend on speed, made for the run's device rather than for the machine that runs edgeslim.

The INT8 plan picks an integer format and keeps float the layers whose INT8 kernels are slower, and a stage
then picks among the mixed plan, full INT8 and FP32-with-int8-weights by speed. Timing ONNX Runtime on this
x86 host answers those questions for this host only. On a Cortex-M with TFLite Micro and CMSIS-NN an INT8
MAC runs several times faster than an FP32 one (`peak_macs_per_cycle` of its profile), and a float layer
costs flash (float weights or conversions), RAM (float activations) and energy; the host's answer ("this
conv is slower in INT8 here") is the wrong one there.

So every speed decision asks one question first (`timed_here`):
  - the device is this host, or a profile that runs the same runtime (`runtime: onnxruntime`) on the same
    kind of CPU (`arch` = this machine's): time it here, with the measurement core's interleaved timer;
  - otherwise: the device's cost model decides (`measure.energy`'s analytic estimator on the profile,
    calibrated where the profile says so), and the integer scheme is the one the device's runtime executes
    (TFLite / TFLite Micro: int8 activations, per-channel symmetric int8 weights = `s8s8-pc`).
The stage notes say which ("timed on this host" / "decided for cortex-m4 from its cost model").

This module is pure logic over a `Device` (no timing, no estimation): the clock that carries the cost model
lives in the measurement layer (`measure.device_clock`) and is injected, as the host clock is.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from edgeslim.devices import HOST_RUNTIME, Device, host_arch, runtime_of, timed_here

# The integer scheme each runtime executes, as an `onnxkit.quant` format name.
RUNTIME_FORMAT = {"tflite-micro": "s8s8-pc", "tflite": "s8s8-pc", "vela": "s8s8-pc"}


def decided_by(device: Device | None) -> str:
    """The label every speed decision carries: how it was made, for which device."""
    if device is None or timed_here(device):
        return "timed on this host" + ("" if device is None or device.name == "host" else
                                       f" (same runtime and CPU as {device.name})")
    cal = " (calibrated)" if device.calibration is not None else ""
    return f"decided for {device.name} from its cost model{cal}"


def int8_speedup(device: Device) -> float:
    """How many times faster an INT8 MAC is than an FP32 MAC on `device` by its cost model."""
    return device.macs_per_second("int8") / device.macs_per_second("fp32")


O = TypeVar("O")


def adapt_options(opts: O, device: Device | None, notes: list[str]) -> O:
    """`opts` (an `int8_plan.Int8Options`) for `device`. Timed here: unchanged. Decided by the cost model:
    one integer format (the runtime's scheme when it is a candidate, else the first candidate; formats run
    the same INT8 MACs in the cost model, so timing cannot tell them apart) and no per-layer speed choice
    (the analytic model gives every layer the same INT8/FP32 rate ratio: either every layer is faster in
    INT8 or none is, and the stage's whole-model pick covers the latter). A note says so."""
    if device is None or timed_here(device):
        notes.append(f"speed decisions: {decided_by(device)}")
        return opts
    names = {f.name for f in fields(opts)}  # type: ignore[arg-type]
    assert {"formats", "speed_choice"} <= names, "adapt_options takes an Int8Options"
    formats: tuple[str, ...] = opts.formats  # type: ignore[attr-defined]
    want = RUNTIME_FORMAT.get(runtime_of(device))
    fmt = want if want in formats else formats[0]
    x = int8_speedup(device)
    notes.append(
        f"speed decisions: {decided_by(device)}: INT8 MACs {x:.1f}x the FP32 rate there "
        f"({runtime_of(device)}); integer format {fmt}"
        + (f" ({runtime_of(device)}'s int8 scheme)" if fmt == want else "")
        + ("; no layer kept float for speed" if x >= 1 else "; every layer slower in INT8 there"))
    changes: dict[str, Any] = {"formats": (fmt,), "speed_choice": False}
    return replace(opts, **changes)  # type: ignore[type-var]


__all__ = ["adapt_options", "decided_by", "host_arch", "int8_speedup", "runtime_of", "timed_here",
           "RUNTIME_FORMAT", "HOST_RUNTIME"]
