"""Calibrate a device profile on published measurements: one fit on all of them, checked by leave-one-out.

On a microcontroller the energy estimate is almost all `active_power x time`, and time is
`MACs / (clock x peak MACs/cycle x efficiency)` (`edgeslim.measure.energy`). One published run that
reports both latency and energy fixes the two unknowns exactly:

    efficiency_i   = efficiency x t_estimated / t_published       (t is proportional to 1 / efficiency)
    active_power_i = (E_published - E_dynamic) / t_published      (mW; E_dynamic: the Horowitz op/byte term)

The fit on a set of runs takes the geometric mean of each over the set (least squares in log space
for the latency: the efficiency that makes the estimated/published ratios multiply to 1). The profile
keeps the fit on **all** published points; each point is also predicted by the fit on all the **others**
(leave-one-out), and those errors are what the label `estimated:calibrated@<device> (LOO error x-y)`
quotes: how far the calibration carries to a network it did not see. No point is chosen by looking at
the others. The networks are the zoo's MLPerf Tiny reference models at the reference input, quantized to
INT8 (static QDQ, int8 weights per channel and int8 activations, as TFLite Micro runs them); weights are
random, which does not change MACs, bytes or the estimate. Every published point is INT8: FP32/FP16
estimates on the profile are labelled "uncalibrated precision".

    .venv/bin/python -m edgeslim.devices.calibrate [--device cortex-m4]

prints the leave-one-out table, the all-points fit and the YAML block to record. Units: ms, mJ, mW, MACs.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeslim.devices import Device, load_device
from edgeslim.errors import EdgeslimError, choices
from edgeslim.measure.onnx_counts import GraphCount, count_onnx


@dataclass(frozen=True)
class Published:
    key: str  # short name: ic, kws, vww, ad
    benchmark: str
    model: str  # zoo name
    shape: tuple[int, ...]
    classes: int
    latency_ms: float
    energy_mj: float
    kwargs: dict = field(default_factory=dict)


# MLPerf Tiny v0.5 (2021), closed division, reference submission: NUCLEO-L4R5ZI (STM32L4R5ZI, Cortex-M4F
# @ 120 MHz), TFLite Micro with CMSIS-NN kernels, INT8 models; latency and energy per inference (energy
# measured with the EEMBC EnergyRunner framework).
MLPERF_TINY_V05_SOURCE = ("MLPerf Tiny Inference v0.5 results (MLCommons, 2021), closed division, reference "
                          "submission on the NUCLEO-L4R5ZI (STM32L4R5ZI Cortex-M4F @ 120 MHz, TFLite Micro + "
                          "CMSIS-NN, INT8); latency and energy per inference")
MLPERF_TINY_V05_L4R5 = [
    Published("ic", "image classification", "resnet8", (3, 32, 32), 10, 704.0, 29.2),
    Published("kws", "keyword spotting", "dscnn", (1, 49, 10), 12, 181.9, 7.37),
    Published("vww", "visual wake words", "mobilenetv1", (3, 96, 96), 2, 600.6, 24.3, {"alpha": 0.25}),
    Published("ad", "anomaly detection", "autoencoder", (640,), 0, 10.4, 0.416),
]
PUBLISHED = {"cortex-m4": (MLPERF_TINY_V05_L4R5, MLPERF_TINY_V05_SOURCE)}


def reference_counts(refs: list[Published], folder: Path | None = None) -> dict[str, GraphCount]:
    """Per-layer counts of each reference network as an INT8 QDQ ONNX model (exported and quantized here)."""
    import torch

    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec
    from edgeslim.onnxkit.quant import IntFormat, quantize_static_file

    logging.getLogger().setLevel(logging.ERROR)  # ORT quantization's advice lines
    out: dict[str, GraphCount] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(folder or tmp)
        for r in refs:
            torch.manual_seed(0)
            net = build_model(make_spec(r.model, r.shape, r.classes, **r.kwargs)).eval()
            fp32, int8 = base / f"{r.key}.onnx", base / f"{r.key}.int8.onnx"
            export_onnx(net, r.shape, fp32)
            calib = np.random.default_rng(0).random((8, *r.shape), dtype=np.float32)
            quantize_static_file(fp32, int8, calib, IntFormat("int8", False, True), "minmax")
            out[r.key] = count_onnx(int8)
    return out


def curve_fit(device: Device, counts: GraphCount, ref: Published) -> Device:
    """The profile with `efficiency` and `active_power_mw` fitted to one published latency and energy."""
    from edgeslim.measure.energy import estimate_from_counts

    e = estimate_from_counts(counts, device)
    assert e.latency_ms and e.dynamic_mj is not None
    eff = device.efficiency * e.latency_ms / ref.latency_ms
    if not 0 < eff <= 1:
        raise EdgeslimError(f"{device.name}: fitting {ref.key} gives efficiency {eff:.3g}, outside (0, 1]: the "
                            "published latency is not reachable with this profile's clock and peak MACs/cycle")
    power = (ref.energy_mj - e.dynamic_mj) / (ref.latency_ms / 1e3)  # mJ / s = mW
    return device.model_copy(update={"efficiency": round(eff, 5), "active_power_mw": round(power, 2)})


def check(device: Device, counts: dict[str, GraphCount], refs: list[Published]) -> list[dict]:
    """Estimate vs published for every reference network (ratio = estimate / published)."""
    from edgeslim.measure.energy import estimate_from_counts

    rows = []
    for r in refs:
        e = estimate_from_counts(counts[r.key], device)
        rows.append({"key": r.key, "benchmark": r.benchmark, "model": r.model, "macs": counts[r.key].macs,
                     "latency_ms": e.latency_ms, "energy_mj": e.mj, "published_latency_ms": r.latency_ms,
                     "published_energy_mj": r.energy_mj, "latency_ratio": (e.latency_ms or 0) / r.latency_ms,
                     "energy_ratio": e.mj / r.energy_mj})
    return rows


def curve_fit_all(device: Device, counts: dict[str, GraphCount], refs: list[Published]) -> Device:
    """The profile fitted on every run of `refs` at once: geometric means of the per-run efficiency and
    active power (module docstring)."""
    one = [curve_fit(device, counts[r.key], r) for r in refs]
    eff = float(np.exp(np.mean([np.log(d.efficiency) for d in one])))
    power = float(np.exp(np.mean([np.log(max(d.active_power_mw, 1e-9)) for d in one])))
    return device.model_copy(update={"efficiency": round(eff, 5), "active_power_mw": round(power, 2)})


def leave_one_out(device: Device, counts: dict[str, GraphCount], refs: list[Published]) -> list[dict]:
    """For each published run: the fit on all the others and its estimate of the run left out."""
    rows = []
    for r in refs:
        others = [o for o in refs if o.key != r.key]
        f = curve_fit_all(device, counts, others)
        rows.append({**check(f, counts, [r])[0], "efficiency": f.efficiency, "active_power_mw": f.active_power_mw,
                     "fitted_on": [o.key for o in others]})
    return rows


def _point(r: dict) -> str:
    return (f"{r['benchmark']} ({r['model']}): {r['energy_mj']:.3g} mJ est. vs {r['published_energy_mj']} mJ "
            f"published ({r['energy_ratio']:.2f}x); {r['latency_ms']:.4g} ms vs {r['published_latency_ms']} ms "
            f"({r['latency_ratio']:.2f}x)")


def calibration_block(before: Device, after: Device, rows: list[dict], loo: list[dict], refs: list[Published],
                      source: str) -> dict:
    """The `calibration:` mapping a profile records (see `edgeslim.devices.Calibration`): the all-points
    fit, its own residuals (`held_out` keeps its name: the fit's error on each point) and the leave-one-out
    errors."""
    ratios = [r["energy_ratio"] for r in loo]
    return {
        "fitted": {"efficiency": after.efficiency, "active_power_mw": after.active_power_mw},
        "a_priori": {"efficiency": before.efficiency, "active_power_mw": before.active_power_mw},
        "fitted_on": "all published points (" + ", ".join(f"{r.key}: {r.model} INT8 {r.latency_ms} ms / "
                                                          f"{r.energy_mj} mJ" for r in refs) + ")",
        "held_out": {r["key"]: "all-points fit: " + _point(r) for r in rows},
        "loo": {r["key"]: f"fit on {'+'.join(r['fitted_on'])}: " + _point(r) for r in loo},
        "loo_energy_ratio": [round(min(ratios), 2), round(max(ratios), 2)],
        "precisions": ["int8"],
        "source": source,
        "command": f"python -m edgeslim.devices.calibrate --device {before.name}",
    }


def loo_table(loo: list[dict]) -> list[str]:
    """The leave-one-out table (markdown)."""
    out = ["| left out | fitted on | efficiency | active power | MACs (INT8) | est. latency | published | ratio "
           "| est. energy | published | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loo:
        out.append(f"| {r['key']} ({r['model']}) | {'+'.join(r['fitted_on'])} | {r['efficiency']:.4f} | "
                   f"{r['active_power_mw']:.1f} mW | {r['macs'] / 1e6:.2f} M | {r['latency_ms']:.1f} ms | "
                   f"{r['published_latency_ms']} ms | {r['latency_ratio']:.2f}x | {r['energy_mj']:.3g} mJ | "
                   f"{r['published_energy_mj']} mJ | {r['energy_ratio']:.2f}x |")
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse  # the maintainer tool's own options: not loaded by importing edgeslim.measure

    import yaml

    ap = argparse.ArgumentParser(description="calibrate a device profile on published measurements (all-points "
                                 "fit, leave-one-out check)")
    ap.add_argument("--device", default="cortex-m4", help=f"profile with published data: {choices(PUBLISHED)}")
    a = ap.parse_args(argv)
    if a.device not in PUBLISHED:
        raise SystemExit(f"no published measurements recorded for '{a.device}'; have: {choices(PUBLISHED)}")
    refs, source = PUBLISHED[a.device]
    dev = load_device(a.device)
    # start from the a-priori values the profile recorded, so a re-run reproduces the recorded fit
    prior = dev.model_copy(update=dev.calibration.a_priori) if dev.calibration else dev
    counts = reference_counts(refs)
    loo = leave_one_out(prior, counts, refs)
    print(f"### {a.device}: leave-one-out over {len(refs)} published points ({source})\n")
    print("\n".join(loo_table(loo)))
    ratios = [r["energy_ratio"] for r in loo]
    print(f"\nleave-one-out energy error: {min(ratios):.2f}x-{max(ratios):.2f}x (estimate / published)")
    fitted = curve_fit_all(prior, counts, refs)
    rows = check(fitted, counts, refs)
    print(f"\nAll-points fit (what the profile keeps): efficiency {fitted.efficiency:.4f}, active power "
          f"{fitted.active_power_mw:.1f} mW")
    for r in rows:
        print(f"  {r['key']}: {r['energy_mj']:.3g} mJ est. vs {r['published_energy_mj']} mJ ({r['energy_ratio']:.2f}x),"
              f" {r['latency_ms']:.4g} ms vs {r['published_latency_ms']} ms ({r['latency_ratio']:.2f}x)")
    print(f"\nA-priori profile ({prior.efficiency} efficiency, {prior.active_power_mw:g} mW):")
    for r in check(prior, counts, refs):
        print(f"  {r['key']}: {r['energy_mj']:.3g} mJ est. vs {r['published_energy_mj']} mJ ({r['energy_ratio']:.2f}x)")
    block = calibration_block(prior, fitted, rows, loo, refs, source)
    print("\nRecord in the profile:\n")
    print(yaml.safe_dump({"efficiency": block["fitted"]["efficiency"],
                          "active_power_mw": block["fitted"]["active_power_mw"], "calibration": block},
                         sort_keys=False, width=120))


if __name__ == "__main__":
    main()
