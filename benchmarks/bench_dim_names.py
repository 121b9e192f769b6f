"""What `onnxkit.dim_names` does to finished runs' last stages (issue 23): for each `run --inputs` folder, the
original model, the last stage as the run wrote it, and the last stage with `name_dims` applied, timed
interleaved in one loop per run (ONNX Runtime, batch 1, one thread) on the first held-out sample, as
bench_final_speed.py times its pairs. `--align 16` adds the last stage with its weights folded to FP32 and its
channel counts zero-padded to 16 (`onnxtorch.align.align_channels`, the export uses 8), then named: ONNX
Runtime's NCHWc pools take only multiples of the SIMD block (16 with AVX-512). An experiment, not a rule: on a
CPU with 8-wide blocks, or one without NCHWc kernels, the extra channels are extra work.

Prints, per variant: dims named, kernels ONNX Runtime runs per call, file size, max abs difference of the outputs
against the last stage as given, p50 and speed-up over the original.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_dim_names.py RUN_DIR [RUN_DIR ...] --seconds 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def variants(stage: Path, align: int) -> dict[str, tuple[bytes, int]]:
    """Variant name -> (serialized model, elementwise nodes whose inputs got named dims)."""
    import onnx
    from bench_cheap_ops import fold_weight_casts

    from edgeslim.onnxkit.dim_names import name_dims
    from edgeslim.onnxtorch.align import align_channels

    m0 = onnx.load(str(stage))
    out = {"last stage": (m0.SerializeToString(), 0)}
    m = onnx.ModelProto()
    m.CopyFrom(m0)
    k = name_dims(m)
    out["last stage + dim_names"] = (m.SerializeToString(), k)
    if align > 1:
        m = onnx.ModelProto()
        m.CopyFrom(m0)
        fold_weight_casts(m)  # align_channels pads FP32 initializers (ONNX Runtime folds these Casts at load)
        m, padded = align_channels(m, align)
        k = name_dims(m)
        out[f"last stage, FP32 weights, align {align} ({padded} convs) + dim_names"] = (m.SerializeToString(), k)
    return out


def main(argv: list[str] | None = None) -> int:
    from bench_final_speed import pairs
    from bench_view_chains import kernels_per_call

    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.onnxkit.session import session

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget of each run's loop (s)")
    ap.add_argument("--align", type=int, default=0, help="also time the last stage padded to this channel multiple")
    a = ap.parse_args(argv)
    print("| model | variant | named | kernels per call | size | max abs diff | p50 | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in a.runs:
        name, orig, stage, fo, fs = pairs(run)[:5]
        var = variants(stage, a.align)
        sess = {"original": session(orig.read_bytes(), threads=1)}
        sess.update({n: session(d, threads=1) for n, (d, _) in var.items()})
        feeds = {n: (fo if n == "original" else fs) for n in sess}
        lat = interleaved_latency(sess, feeds, seconds=a.seconds, per_round=20)
        ref = sess["last stage"].run(None, fs)
        t0 = lat["original"].p50_ms
        print(f"| {name} | original | - | {kernels_per_call(orig.read_bytes(), fo)} | {orig.stat().st_size} B | - | "
              f"{t0 * 1e3:.1f} us | 1.000x |")
        for n, (d, k) in var.items():
            diff = max(float(np.max(np.abs(x - y))) for x, y in zip(ref, sess[n].run(None, fs)))
            t = lat[n].p50_ms
            print(f"| {name} | {n} | {k} | {kernels_per_call(d, fs)} | {len(d)} B | {diff:.2g} | {t * 1e3:.1f} us | "
                  f"{t0 / t:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
