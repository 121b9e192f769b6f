"""A pruned stage's ONNX file with its channel counts padded (`edgeslim.onnxtorch.align.align_channels`) at several
multiples, FP32 and static INT8, timed against the original in ONE interleaved run. Prints one markdown table.

    python benchmarks/bench_align.py ORIGINAL.onnx STAGE.onnx [--multiples 4 8 16] [--rounds 60] [--int8]

Inputs: the preset of `bench_optimize.write_inputs` for ORIGINAL's file name (2 samples; the first one is timed).
INT8: ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, calibrated on the 2
samples) of each FP32 file, the same settings for all. Timing: ONNX Runtime CPU, batch 1, one thread, all
optimisations (`edgeslim.measure.latency.interleaved_times`); p50 ms and the median over rounds of (time / the
unpadded stage's time in the same round). NCHWc: convolutions ONNX Runtime runs in its NCHWc layout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve()


def _int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], tmp: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    pre = tmp / f"pre_{src.name}"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("original", type=Path)
    ap.add_argument("stage", type=Path)
    ap.add_argument("--multiples", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--int8", action="store_true", help="also time static INT8 of each FP32 file")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from bench_optimize import write_inputs
    from bench_reexport import _counts

    from edgeslim.measure.latency import interleaved_times
    from edgeslim.onnxkit.session import session
    from edgeslim.onnxtorch.align import align_channels

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if not write_inputs(a.original, tmp / "in.npz", 2):
            raise SystemExit(f"{a.original.name}: no input preset in bench_optimize.PRESETS")
        d = dict(np.load(tmp / "in.npz"))
        name = next(iter(d))
        files: dict[str, Path] = {"original": a.original, "stage": a.stage}
        padded: dict[str, int] = {}
        stage = onnx.load(str(a.stage))
        for k in a.multiples:
            m, padded[f"stage pad {k}"] = align_channels(stage, k)
            files[f"stage pad {k}"] = tmp / f"pad{k}.onnx"
            onnx.save(m, str(files[f"stage pad {k}"]))
        if a.int8:
            feeds = [{name: d[name][i:i + 1]} for i in range(len(d[name]))]
            for k in ["stage", *(f"stage pad {m}" for m in a.multiples)]:
                files[f"{k} INT8"] = tmp / f"{k.replace(' ', '_')}_int8.onnx"
                _int8(files[k], files[f"{k} INT8"], feeds, tmp)
        sess = {k: session(v) for k, v in files.items()}
        x = {k: {s.get_inputs()[0].name: d[name][:1]} for k, s in sess.items()}
        t = {k: np.asarray(v) for k, v in interleaved_times(sess, x, rounds=a.rounds, min_rounds=a.rounds).items()}
        print(f"{a.stage} vs {a.original.name}: {a.rounds} interleaved rounds, ONNX Runtime CPU, batch 1, 1 thread\n")
        print("| file | convs padded | p50 ms | median per-round ratio to the unpadded stage | nodes ORT runs | "
              "NCHWc convs | size MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k, p in files.items():
            _, nodes, nchwc = _counts(p, tmp)
            print(f"| {k} | {padded.get(k.replace(' INT8', ''), '-')} | {np.median(t[k]) * 1e3:.2f} | "
                  f"{np.median(t[k] / t['stage']):.3f} | {nodes} | {nchwc} | {p.stat().st_size / 1e6:.2f} |")


if __name__ == "__main__":
    main()
