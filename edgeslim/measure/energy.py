"""Energy per inference: measured where the machine allows it, estimated otherwise, always labelled.

*Measured* (`measured:rapl`): run the model in ONNX Runtime inside an energy window (RAPL package +
DRAM counters through powercap sysfs) and divide by the number of inferences. It includes whatever
else the socket did meanwhile; we say so in the label's note.

*Estimated*: an analytic model over per-layer counts (`measure.onnx_counts`) and a device profile
(`devices/*.yaml`), labelled by what stands behind the profile (`estimate_label`):
`estimated:calibrated@cortex-m4 (LOO error 0.66x-1.78x)` when the profile has a `calibration` block (the
leave-one-out energy error range it records), `estimated:uncalibrated@cortex-a72` when it has none, plus
`(uncalibrated precision: fp32)` for MACs in a precision no published point ran in, and
`; incomplete: N ops not counted` (added by `measure.fields.energy_fields`) when the graph was not fully
counted. On this host with no readable counter the static term rests on the *measured* latency:
`estimated:uncalibrated@host (on measured latency)`.

    E_dynamic = sum_layers  MACs x pJ/MAC[precision] + other ops x 0.2 pJ/MAC[precision]
                            + weight bytes x pJ/B[weights_in] + activation bytes x pJ/B[activations_in]
    t         = sum_layers  (MACs + ops) / (clock x cores x peak MACs/cycle[precision] x efficiency)
    E_static  = active_power x t
    E         = E_dynamic + E_static

pJ figures are Horowitz (ISSCC 2014, 45 nm) times the device's `energy_scale`. Every weight and
activation byte is counted once per inference: real kernels re-read inputs (im2col, tiling), so the
memory term is a lower bound. On microcontrollers E_static (clock tree, instruction fetch, leakage
while busy) dominates by orders of magnitude; the breakdown keeps the two terms apart so users see
which one they are changing. Units: pJ per op/byte, mJ per inference, ms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from edgeslim.devices import Device, load_device
from edgeslim.measure.latency import Runner
from edgeslim.measure.onnx_counts import GraphCount, count_onnx

OP_FRACTION_OF_MAC = 0.2  # an add/compare costs ~0.2 of a MAC (Horowitz: fp32 add 0.9 pJ vs MAC 4.6 pJ)


@dataclass
class Energy:
    mj: float  # energy per inference, mJ
    method: str  # "estimated:calibrated@cortex-m4 (LOO error 0.66x-1.78x)", "measured:rapl", ...
    latency_ms: float | None = None  # estimated (analytic) or measured latency per inference, ms
    dynamic_mj: float | None = None  # MAC + memory energy (estimated only)
    static_mj: float | None = None  # active power x time (estimated only)
    compute_mj: float | None = None
    memory_mj: float | None = None
    macs_by_precision: dict[str, int] = field(default_factory=dict)
    breakdown: list[dict] = field(default_factory=list)  # per layer: name, op, precision, macs, uj, time_ms
    note: str = ""

    def as_dict(self, layers: bool = False) -> dict:
        d = asdict(self)
        if not layers:
            d.pop("breakdown")
        return d


def estimate_from_counts(counts: GraphCount, device: Device) -> Energy:
    """The analytic model (module docstring) over `counts` for `device`. Pure arithmetic."""
    w_pj = device.pj_per_byte(device.weights_in)
    a_pj = device.pj_per_byte(device.activations_in)
    rows = []
    compute_pj = memory_pj = 0.0
    seconds = 0.0
    for layer in counts.layers:
        mac_pj = device.pj_per_mac(layer.precision)
        c = layer.macs * mac_pj + layer.ops * mac_pj * OP_FRACTION_OF_MAC
        mem = layer.weight_bytes * w_pj + (layer.act_in_bytes + layer.act_out_bytes) * a_pj
        t = (layer.macs + layer.ops) / device.macs_per_second(layer.precision)
        compute_pj += c
        memory_pj += mem
        seconds += t
        rows.append({"name": layer.name, "op": layer.op, "precision": layer.precision, "macs": layer.macs,
                     "compute_uj": c * 1e-6, "memory_uj": mem * 1e-6, "time_ms": t * 1e3,
                     "static_uj": device.active_power_mw * t * 1e3})
    dynamic_mj = (compute_pj + memory_pj) * 1e-9
    static_mj = device.active_power_mw * seconds  # mW x s = mJ
    return Energy(
        mj=dynamic_mj + static_mj, method=estimate_label(device, counts), latency_ms=seconds * 1e3,
        dynamic_mj=dynamic_mj, static_mj=static_mj, compute_mj=compute_pj * 1e-9, memory_mj=memory_pj * 1e-9,
        macs_by_precision=counts.macs_by_precision(), breakdown=rows,
    )


def estimate_label(device: Device, counts: GraphCount | None = None) -> str:
    """The label of an analytic estimate on `device` (module docstring): calibrated only when the profile
    carries a `calibration` block, whatever its name; precisions it was not calibrated in are named."""
    cal = device.calibration
    if cal is None:
        return f"estimated:uncalibrated@{device.name}"
    loo = cal.loo_energy_ratio
    label = f"estimated:calibrated@{device.name}" + (f" (LOO error {loo[0]:.2f}x-{loo[-1]:.2f}x)" if loo else "")
    other = sorted(p for p, n in (counts.macs_by_precision() if counts else {}).items() if n and p not in cal.precisions)
    return label + (f" (uncalibrated precision: {', '.join(other)})" if other else "")


def on_measured_latency(e: Energy, device: Device, latency_ms: float) -> Energy:
    """`e` with its static term rebuilt on a measured latency (this host): active power x measured time."""
    static = device.active_power_mw * latency_ms / 1e3
    return Energy(mj=(e.dynamic_mj or 0.0) + static, method=e.method + " (on measured latency)",
                  latency_ms=latency_ms, dynamic_mj=e.dynamic_mj, static_mj=static, compute_mj=e.compute_mj,
                  memory_mj=e.memory_mj, macs_by_precision=e.macs_by_precision, breakdown=e.breakdown,
                  note=f"static term on the measured latency {latency_ms:.4g} ms (analytic {e.latency_ms:.4g} ms)")


def estimate_energy(model: str | Path | onnx.ModelProto, device: str | Path | Device = "host",
                    shapes: dict[str, list[int]] | None = None) -> Energy:
    """Estimated energy per inference (batch 1) of an ONNX model (FP32, FP16 or QDQ INT8) on `device`."""
    return estimate_from_counts(count_onnx(model, shapes), load_device(device))


def measure_energy(runner: Runner, runs: int = 200, min_seconds: float = 1.0, threads: int = 1,
                   powercap_root: Path | None = None) -> Energy | None:
    """Measured energy per inference with RAPL (or None when no counter is readable): `runner` (one
    inference) is called by the one timer (`measure.latency.interleaved_latency`) inside an energy window,
    at least `runs` times and `min_seconds` long so the counters (updated every ~1 ms) resolve the window.
    GPU counters (NVML) are left out: the inference runs on the CPU."""
    from edgeslim.measure import rapl
    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.measure.window import window

    root = powercap_root or rapl.POWERCAP
    if not rapl.available(root):
        return None
    with window("inference", nvml=False, powercap_root=root) as w:
        lat = interleaved_latency({"model": runner}, seconds=min_seconds, min_rounds=runs, warmup=10,
                                  threads=threads)["model"]
    if w.energy_j is None:
        return None
    n = lat.runs + 10
    return Energy(mj=w.energy_j * 1e3 / n, method=w.method, latency_ms=w.seconds * 1e3 / n,
                  note=f"{n} inferences; socket-wide counters include other processes' energy")
