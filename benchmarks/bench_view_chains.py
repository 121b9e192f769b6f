"""Per-call latency of ONNX files before/after `onnxkit.view_chains.collapse_views` (issue 23): the view-op and
Slice chains a re-exported stage keeps, collapsed. For each file: nodes in the main graph, kernels ONNX Runtime
runs per call (its profiler, one call), bitwise equality of every output at batch 1 and 3 (where the batch is
symbolic), and the median latency of both files timed interleaved in one process (ONNX Runtime, batch 1, one
thread; random normal float inputs, int inputs 16000 as a VAD's sample rate).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_view_chains.py MODEL.onnx [MODEL.onnx ...] --seconds 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def feeds(model, batch: int, seed: int = 0, fixed: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for `model`: symbolic dims get `batch` (axis 0) or the `fixed` shape's dim; int inputs are
    16000."""
    from onnx import helper

    rng, out = np.random.default_rng(seed), {}
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch if k == 0 or i.name not in (fixed or {})
                 else (fixed or {})[i.name][k] for k, d in enumerate(t.shape.dim)]
        dt = helper.tensor_dtype_to_np_dtype(t.elem_type)
        out[i.name] = (np.full(shape, 16000, dt) if np.issubdtype(dt, np.integer)
                       else rng.standard_normal(shape).astype(dt))
    return out


def kernels_per_call(data: bytes, feed: dict[str, np.ndarray]) -> int:
    """How many kernels ONNX Runtime runs in one call (its profiler; constant-folded nodes are not counted)."""
    import onnxruntime as ort

    from edgeslim.onnxkit.ort_options import session_options

    with tempfile.TemporaryDirectory() as td:
        o = session_options(1)
        o.enable_profiling, o.profile_file_prefix = True, str(Path(td) / "p")
        s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
        s.run(None, feed)
        ev = json.loads(Path(s.end_profiling()).read_text())
    return sum(1 for e in ev if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"))


def main() -> None:
    import onnx

    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.onnxkit.session import session
    from edgeslim.onnxkit.view_chains import collapse_views

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shape", action="append", default=[], help="NAME=1x576: the shape of an input whose dims after axis 0 are symbolic (axis 0 is the batch)")
    a = ap.parse_args()
    fixed = {k: [int(v) for v in s.split("x")] for k, s in (x.split("=") for x in a.shape)}
    print("| model | nodes | kernels per call | bitwise equal (batch 1, 3) | before | after | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for p in a.models:
        m = onnx.load(str(p))
        after = onnx.ModelProto()
        after.CopyFrom(m)
        collapse_views(after)
        d0, d1 = m.SerializeToString(), after.SerializeToString()
        equal = []
        for b in (1, 3):
            f = feeds(m, b, fixed=fixed)
            try:
                r0, r1 = session(d0, threads=1).run(None, f), session(d1, threads=1).run(None, f)
            except Exception:  # a fixed-batch file does not take batch 3  # noqa: BLE001
                continue
            equal.append(all(np.array_equal(x, y) for x, y in zip(r0, r1)))
        f = feeds(m, 1, fixed=fixed)
        lat = interleaved_latency({"before": session(d0, threads=1), "after": session(d1, threads=1)},
                                  {"before": f, "after": f}, seconds=a.seconds, per_round=20)
        t0, t1 = lat["before"].p50_ms * 1e3, lat["after"].p50_ms * 1e3
        print(f"| {'/'.join(p.parts[-5:])} | {len(m.graph.node)} -> {len(after.graph.node)} | "
              f"{kernels_per_call(d0, f)} -> {kernels_per_call(d1, f)} | {equal} | {t0:.1f} us | {t1:.1f} us | "
              f"{t0 / t1:.3f}x |")


if __name__ == "__main__":
    main()
