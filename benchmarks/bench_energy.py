"""Deploy-and-measure benchmark: energy estimator vs published MLPerf Tiny measurements, the arena
planner on the zoo, ONNX Runtime optimisation levels, ORT vs PyTorch latency, the energy window here.

    .venv/bin/python benchmarks/bench_energy.py [--runs 300] [--threads 1]

Prints markdown tables. Models have random weights: energy, arena, MACs and latency do not depend on
the weight values (accuracy is not measured here). INT8 models are ONNX Runtime static QDQ
(per-channel, calibrated on random inputs) so the estimator sees int8 MACs as a deployed model has.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim.deploy.compile import compile_ort
from edgeslim.deploy.export import export_onnx
from edgeslim.devices import builtin_devices, load_device
from edgeslim.energy import window
from edgeslim.measure.arena import plan_activation_arena
from edgeslim.measure.latency import interleaved_latency
from edgeslim.models import build_model, make_spec
from edgeslim.onnxkit.session import session

ZOO = [("lenet5", (1, 28, 28), 10), ("resnet8", (3, 32, 32), 10), ("dscnn", (1, 49, 10), 12),
       ("mobilenetv1", (3, 96, 96), 2), ("cnn1d", (1, 40), 10), ("lenet300", (1, 28, 28), 10)]


def build(name: str, shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_spec(name, shape, classes)).eval()


def export_pair(net: torch.nn.Module, shape: tuple[int, ...], folder: Path, tag: str) -> tuple[Path, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = folder / f"{tag}.onnx"
    export_onnx(net, shape, fp32)
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": rng.random((1, *shape), dtype=np.float32)} for _ in range(16)])

        def get_next(self):  # noqa: ANN201 (ORT's interface)
            return next(self.batches, None)

    int8 = folder / f"{tag}.int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return fp32, int8


def mlperf_table(folder: Path) -> None:
    """The cortex-m4 profile (one fit on all four published MLPerf Tiny v0.5 reference runs) against each run,
    beside the a-priori profile and the leave-one-out estimate (the fit on the three others)."""
    from edgeslim.devices.calibrate import MLPERF_TINY_V05_L4R5, check, leave_one_out, reference_counts

    m4 = load_device("cortex-m4")
    assert m4.calibration is not None
    prior = m4.model_copy(update=m4.calibration.a_priori)
    counts = reference_counts(MLPERF_TINY_V05_L4R5, folder)
    print(f"\n### Estimator vs MLPerf Tiny v0.5 on the STM32L4R5 (cortex-m4: {m4.clock_mhz:g} MHz, int8 peak "
          f"{m4.peak_macs_per_cycle['int8']:g} MAC/cycle; calibrated on {m4.calibration.fitted_on})\n")
    print("| benchmark (zoo model, INT8) | MACs | a priori (eff. 0.25, 40 mW) | calibrated latency | published "
          "| calibrated energy | published | all-points fit / published | leave-one-out / published |")
    print("|---|---|---|---|---|---|---|---|---|")
    loo = leave_one_out(prior, counts, MLPERF_TINY_V05_L4R5)
    for r, p, o in zip(check(m4, counts, MLPERF_TINY_V05_L4R5), check(prior, counts, MLPERF_TINY_V05_L4R5), loo):
        print(f"| {r['benchmark']} ({r['model']}) | {r['macs'] / 1e6:.2f} M | {p['energy_mj']:.3g} mJ "
              f"({p['energy_ratio']:.2f}x) | {r['latency_ms']:.1f} ms | {r['published_latency_ms']} ms | "
              f"{r['energy_mj']:.3g} mJ | {r['published_energy_mj']} mJ | {r['energy_ratio']:.2f}x | "
              f"{o['energy_ratio']:.2f}x (fit on {'+'.join(o['fitted_on'])}) |")


def planner_table(folder: Path) -> None:
    print("\n### Activation arena planner (batch 1, 16-byte alignment, greedy by size)\n")
    print("| model | input | precision | naive sum | peak live | arena (graph order) | arena (best order) "
          "| search | plan time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape, classes in ZOO:
        fp32, int8 = export_pair(build(name, shape, classes), shape, folder, f"plan-{name}")
        for prec, path in (("fp32", fp32), ("int8 QDQ", int8)):
            t0 = time.perf_counter()
            p = plan_activation_arena(path)
            dt = (time.perf_counter() - t0) * 1e3
            print(f"| {name} | {'x'.join(map(str, shape))} | {prec} | {p.naive_bytes:,} | {p.peak_live_bytes:,} | "
                  f"{p.arena_bytes:,} | {p.reordered_arena_bytes:,} | {p.reorder_method} | {dt:.0f} ms |")


def timed(sessions: dict[str, object], x: np.ndarray, runs: int, net: torch.nn.Module | None = None) -> dict:
    """The one timer (edgeslim.measure.latency), interleaved: each round runs every candidate once, PyTorch
    eager included, so load affects all alike. (p50, p90) in ms."""
    runners: dict[str, object] = dict(sessions)
    feeds = dict.fromkeys(sessions, {"input": x})
    if net is not None:
        xt = torch.from_numpy(x)
        runners["pytorch eager"] = lambda: net(xt)
    with torch.inference_mode():
        lat = interleaved_latency(runners, feeds, rounds=runs, warmup=20)
    return {k: (v.p50_ms, v.p90_ms) for k, v in lat.items()}


def levels_table(folder: Path, runs: int, threads: int) -> None:
    print(f"\n### ONNX Runtime optimisation levels vs PyTorch eager (batch 1, {threads} thread, "
          f"{runs} interleaved runs, p50 / p90 ms)\n")
    print("| model | candidate | nodes | fusions | p50 | p90 |")
    print("|---|---|---|---|---|---|")
    torch.set_num_threads(threads)
    for name, shape, classes in [("resnet8", (3, 32, 32), 10), ("dscnn", (1, 49, 10), 12),
                                 ("mobilenetv1", (3, 96, 96), 2)]:
        net = build(name, shape, classes)
        src = folder / f"lv-{name}.onnx"
        export_onnx(net, shape, src)
        sess, info = {}, {}
        for lvl in ("disable", "basic", "extended", "all"):
            out = folder / f"lv-{name}-{lvl}.onnx"
            rep = compile_ort(src, out, lvl)
            # the saved graph is run without further optimisation so each level is measured as saved
            sess[f"ORT {lvl}"] = session(out, threads=threads, level="disable")
            fus = [f for f in rep.fusions if "absorbed" not in f]
            info[f"ORT {lvl}"] = (rep.nodes_after, "; ".join(fus) or "-")
        x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        res = timed(sess, x, runs, net)
        for k, (p50, p90) in res.items():
            nodes, fus = info.get(k, ("-", "-"))
            print(f"| {name} | {k} | {nodes} | {fus} | {p50:.3f} | {p90:.3f} |")


def devices_table(folder: Path) -> None:
    print("\n### ResNet-8 (32x32x3, INT8 QDQ) on every device profile (estimated)\n")
    print("| device | fits | flash needed / available | RAM needed / available | est. latency | est. energy |")
    print("|---|---|---|---|---|---|")
    from edgeslim.api import check_fit

    _, int8 = export_pair(build("resnet8", (3, 32, 32), 10), (3, 32, 32), folder, "dev-resnet8")
    for d in builtin_devices():
        r = check_fit(int8, d)
        print(f"| {d} | {'yes' if r['fits'] else 'NO'} | {r['flash_bytes']:,} / {r['flash_available']:,} | "
              f"{r['ram_bytes']:,} / {r['ram_available']:,} | {r['latency_ms']:.3g} ms | {r['energy_mj']:.3g} mJ |")


def window_line() -> None:
    with window("probe") as w:
        time.sleep(0.05)
    print(f"\nEnergy window on this host: method `{w.method}`"
          + (f", {w.energy_j:.3f} J over {w.seconds:.2f} s" if w.energy_j is not None else f" ({w.note})"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-latency", action="store_true")
    a = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT quantization's advice lines
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {sys.version.split()[0]}, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mlperf_table(folder)
        planner_table(folder)
        devices_table(folder)
        if not a.skip_latency:
            levels_table(folder, a.runs, a.threads)
    window_line()


if __name__ == "__main__":
    main()
