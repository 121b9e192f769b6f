"""The INT8 plan's types: its options (`Int8Options`), its result (`Int8Plan`), and the timing interface it is
given (`Clock`, implemented by the measurement core). Split from `quant.int8_plan`, which re-exports them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import onnx

from edgeslim.quant.layer_select import WEIGHT_CODES_MIN, Units, UnitTime
from edgeslim.quant.qdq_float import keep_float


class RatioLike(Protocol):
    @property
    def speedup(self) -> float: ...

    def speed_verdict(self, margin: float = 0.0) -> str: ...


class Clock(Protocol):
    """Times models and compares them (`measure.core.Measurer.clock`)."""

    def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
        """{name: per-round times (s)} of the serialized models, timed interleaved in one run."""
        ...

    def ratio(self, cand: Sequence[float], ref: Sequence[float]) -> RatioLike:
        """Per-round time ratio cand / ref with its confidence interval."""
        ...

    def profile(self, models: dict[str, bytes], runs: int = 15) -> dict[str, dict[str, float]]:
        """{name: {ORT node name: median kernel time (us)}} of the serialized models, interleaved."""
        ...


FORMATS = ("u8s8-pc", "u8s8-rr-pc", "s8s8-pc")
FORMAT_MARGIN = 0.05  # a less precise integer format must be this much faster (whole CI) to be chosen


@dataclass(frozen=True)
class Int8Options:
    formats: tuple[str, ...] = FORMATS  # timed on the fully quantized model; ties go to the first
    fold: bool = True                   # BatchNorm / constant affine folding and hard-swish fusion
    cle: bool = True                    # cross-layer equalisation
    calib: str = "select"               # "select" (per tensor, validated end to end) or one method
    adaround: bool = True
    adaround_layers: int = 4            # the units with the largest weight-rounding sensitivity
    bias_correction: bool = True
    range_search: bool = False          # end-to-end ranges of the most sensitive layers (quant.range_search; off:
                                        # on PP-OCRv4 rec +0.019 full INT8 score, the same 33 fidelity floats)
    fidelity_fallback: bool = True
    gptq: bool = True                   # GPTQ codes (quant.gptq) for the fidelity floats' int8 storage
    speed_choice: bool = True
    target_cosine: float = 0.995        # worst-output cosine the INT8 model must keep vs the reference
    exclude_ops: frozenset[str] = frozenset()
    exclude_nodes: frozenset[str] = frozenset()
    probe_feeds: int = 4                # feeds for per-unit sensitivity (the bisection uses all)
    profile_runs: int = 15
    threads: int = 1
    seed: int = 0


@dataclass
class Int8Plan:
    model: onnx.ModelProto              # mixed QDQ model
    float_model: onnx.ModelProto        # the prepared float model (FP32 reference, original weights)
    fmt: str
    float_units: dict[str, str]         # unit -> why it stayed float
    int8_units: list[str]
    unit_times: dict[str, UnitTime]
    cosine: float                       # worst-output cosine vs the reference on all feeds
    notes: list[str] = field(default_factory=list)
    calib: dict[str, int] = field(default_factory=dict)  # method -> tensors
    quantized_from: onnx.ModelProto | None = None  # float model after AdaRound / bias correction
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    full: onnx.ModelProto | None = None  # every unit INT8, in `fmt`
    units: Units = field(default_factory=Units)
    steps: dict = field(default_factory=dict)  # per step: what it measured (cosines, speed-ups, counts)
    exact_int8: list[str] = field(default_factory=list)  # fidelity units whose weights are int8 on disk, not fp16

    def variant(self, fidelity: bool = True, speed: bool = True) -> onnx.ModelProto:
        """The plan with only some of its float choices applied (ablation): `fidelity` keeps the layers
        kept float for fidelity, `speed` those kept float for speed."""
        assert self.full is not None
        fl = {u: w for u, w in self.float_units.items() if (w.startswith("fidelity") and fidelity)
              or (not w.startswith("fidelity") and speed)}
        exact = [u for u, w in fl.items() if w.startswith("fidelity")]
        return keep_float(self.full, self.units.nodes(fl), exact=self.units.nodes(exact), float_model=self.float_model,
                          int8_min_elements=WEIGHT_CODES_MIN, exact_int8=self.units.nodes(self.exact_int8))

    @property
    def exact_units(self) -> list[str]:
        """Units kept float for fidelity (they run with their original float weights)."""
        return [u for u, w in self.float_units.items() if w.startswith("fidelity")]

    @property
    def float_nodes(self) -> set[str]:
        return self.units.nodes(self.float_units)

    def exact_weights(self, m: onnx.ModelProto) -> set[str]:
        """Initializers of `m` read by the nodes of fidelity units (to keep them out of int8 storage)."""
        nodes = self.units.nodes(self.exact_units)
        inits = {t.name for t in m.graph.initializer}
        return {i for n in m.graph.node if n.name in nodes for i in n.input if i in inits}

    def report(self) -> dict:
        """JSON-able: what stayed float and why, per-unit FP32/INT8 kernel time (us), notes."""
        return {
            "format": self.fmt, "cosine": self.cosine, "notes": self.notes, "calibration": self.calib,
            "steps": self.steps,
            "int8_layers": len(self.int8_units), "float_layers": self.float_units,
            "layer_times_us": {u: {"fp32": round(t.fp32_us, 1), "int8": round(t.int8_us, 1),
                                   "speedup": round(t.fp32_us / t.int8_us, 3) if t.int8_us else None}
                               for u, t in self.unit_times.items()},
        }
