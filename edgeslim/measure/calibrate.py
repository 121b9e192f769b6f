"""Calibrate a device profile on published measurements: fit on one network, check on the others.

On a microcontroller the energy estimate is almost all `active_power x time`, and time is
`MACs / (clock x peak MACs/cycle x efficiency)` (`edgeslim.measure.energy`). One published run that
reports both latency and energy fixes the two unknowns exactly:

    efficiency'    = efficiency x t_estimated / t_published       (t is proportional to 1 / efficiency)
    active_power'  = (E_published - E_dynamic) / t_published      (mW; E_dynamic: the Horowitz op/byte term)

The other published runs are held out: their estimates with the fitted profile, against what was
published, say how far a one-point calibration carries to networks it did not see. The networks are the
zoo's MLPerf Tiny reference models at the reference input, quantized to INT8 (static QDQ, int8 weights
per channel and int8 activations, as TFLite Micro runs them); weights are random, which does not
change MACs, bytes or the estimate.

    .venv/bin/python -m edgeslim.measure.calibrate [--device cortex-m4] [--fit-on ic]

prints the fit for every choice of fitted network (leave-one-out) and the YAML block to record.
Units: ms, mJ, mW, MACs.
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


def fit(device: Device, counts: GraphCount, ref: Published) -> Device:
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


def calibration_block(before: Device, after: Device, rows: list[dict], ref: Published, source: str) -> dict:
    """The `calibration:` mapping a profile records (see `edgeslim.devices.Calibration`)."""
    held = {r["key"]: (f"{r['benchmark']} ({r['model']}): {r['energy_mj']:.3g} mJ est. vs {r['published_energy_mj']}"
                       f" mJ published ({r['energy_ratio']:.2f}x); {r['latency_ms']:.4g} ms vs "
                       f"{r['published_latency_ms']} ms ({r['latency_ratio']:.2f}x)")
            for r in rows if r["key"] != ref.key}
    return {
        "fitted": {"efficiency": after.efficiency, "active_power_mw": after.active_power_mw},
        "a_priori": {"efficiency": before.efficiency, "active_power_mw": before.active_power_mw},
        "fitted_on": f"{ref.benchmark}: {ref.model} INT8 at {'x'.join(map(str, ref.shape))}, {ref.latency_ms} ms / "
                     f"{ref.energy_mj} mJ published",
        "held_out": held, "source": source,
        "command": f"python -m edgeslim.measure.calibrate --device {before.name} --fit-on {ref.key}",
    }


def main(argv: list[str] | None = None) -> None:
    import argparse  # the maintainer tool's own options: not loaded by importing edgeslim.measure

    import yaml

    ap = argparse.ArgumentParser(description="calibrate a device profile on published measurements")
    ap.add_argument("--device", default="cortex-m4", help=f"profile with published data: {choices(PUBLISHED)}")
    ap.add_argument("--fit-on", default="ic", help="the published network to fit on (the others are held out)")
    a = ap.parse_args(argv)
    if a.device not in PUBLISHED:
        raise SystemExit(f"no published measurements recorded for '{a.device}'; have: {choices(PUBLISHED)}")
    refs, source = PUBLISHED[a.device]
    dev = load_device(a.device)
    # start from the a-priori values the profile recorded, so a re-run reproduces the recorded fit
    prior = dev.model_copy(update=dev.calibration.a_priori) if dev.calibration else dev
    counts = reference_counts(refs)
    print(f"### {a.device}: fit on one network, check on the others ({source})\n")
    print("| fitted on | efficiency | active power | network | MACs (INT8) | est. latency | published | ratio "
          "| est. energy | published | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    chosen: dict | None = None
    for ref in refs:
        fitted = fit(prior, counts[ref.key], ref)
        rows = check(fitted, counts, refs)
        for r in rows:
            tag = "(fitted)" if r["key"] == ref.key else "held out"
            print(f"| {ref.key} | {fitted.efficiency:.4f} | {fitted.active_power_mw:.1f} mW | {r['key']} {tag} | "
                  f"{r['macs'] / 1e6:.2f} M | {r['latency_ms']:.1f} ms | {r['published_latency_ms']} ms | "
                  f"{r['latency_ratio']:.2f}x | {r['energy_mj']:.3g} mJ | {r['published_energy_mj']} mJ | "
                  f"{r['energy_ratio']:.2f}x |")
        if ref.key == a.fit_on:
            chosen = calibration_block(prior, fitted, rows, ref, source)
    if chosen is None:
        raise SystemExit(f"--fit-on {a.fit_on}: valid: {choices(r.key for r in refs)}")
    print(f"\nA-priori profile ({prior.efficiency} efficiency, {prior.active_power_mw:g} mW):")
    for r in check(prior, counts, refs):
        print(f"  {r['key']}: {r['energy_mj']:.3g} mJ est. vs {r['published_energy_mj']} mJ ({r['energy_ratio']:.2f}x)")
    print("\nRecord in the profile:\n")
    print(yaml.safe_dump({"efficiency": chosen["fitted"]["efficiency"],
                          "active_power_mw": chosen["fitted"]["active_power_mw"], "calibration": chosen},
                         sort_keys=False, width=120))


if __name__ == "__main__":
    main()
