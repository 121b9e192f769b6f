"""A clock for a device that is not this host: the device's cost model answers what a timer answers here.

`quant.int8_plan` and the `quantize_int8` stage decide by a `Clock` (per-round times of serialized models,
compared by `measure.decide.ratio`). For a device whose speed this host cannot time (a Cortex-M running
TFLite Micro, an Arm board: `quant.device_choice.timed_here`), `EstimatedClock` gives every model the
latency of the analytic estimator (`measure.energy.estimate_from_counts` over `measure.onnx_counts`, on the
device profile, calibrated where the profile is): the same number every "round", so ratios are exact and
the decision rule (`measure.decide.choose_option`) works unchanged. Its figures are *estimates*, and the label
(`method`) says so. Units: seconds (times), microseconds (profile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeslim.devices import Device, timed_here
from edgeslim.measure.decide import InterleavedClock, Ratio, ratio


@dataclass
class EstimatedClock:
    """Times from `device`'s cost model at the input `shapes` (batch 1)."""

    device: Device
    shapes: dict[str, list[int]] = field(default_factory=dict)
    rounds: int = 1

    @property
    def method(self) -> str:
        from edgeslim.measure.energy import estimate_label

        return estimate_label(self.device)

    def seconds(self, model: bytes | onnx.ModelProto) -> float:
        """Estimated latency (s) of one inference of `model` on the device."""
        from edgeslim.measure.energy import estimate_from_counts
        from edgeslim.measure.onnx_counts import count_onnx

        m = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
        shapes = {i.name: self.shapes[i.name] for i in m.graph.input if i.name in self.shapes} or None
        e = estimate_from_counts(count_onnx(m, shapes), self.device)
        return float(e.latency_ms or 0.0) * 1e-3

    def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
        return {k: [self.seconds(v)] * self.rounds for k, v in models.items()}

    def ratio(self, cand: Sequence[float], ref: Sequence[float]) -> Ratio:
        return ratio(cand, ref)

    def profile(self, models: dict[str, bytes], runs: int = 15) -> dict[str, dict[str, float]]:
        """Per node: estimated time (us) by the cost model (node names as in the model)."""
        from edgeslim.measure.energy import estimate_from_counts
        from edgeslim.measure.onnx_counts import count_onnx

        out = {}
        for k, v in models.items():
            e = estimate_from_counts(count_onnx(onnx.load_from_string(v)), self.device)
            out[k] = {r["name"]: r["time_ms"] * 1e3 for r in e.breakdown}
        return out


def clock_for(device: Device | None, feed: Mapping[str, np.ndarray], seconds: float = 3.0, threads: int = 1,
              min_rounds: int = 15) -> InterleavedClock | EstimatedClock:
    """The clock speed decisions for `device` ask: this host's timer when it answers for `device`
    (`devices.timed_here`), the device's cost model otherwise."""
    if device is None or timed_here(device):
        return InterleavedClock(dict(feed), seconds=seconds, threads=threads, min_rounds=min_rounds)
    return EstimatedClock(device, {k: [1, *np.asarray(v).shape[1:]] for k, v in feed.items()})


__all__ = ["EstimatedClock", "clock_for"]
