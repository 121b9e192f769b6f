"""Storage of the INT8 plan's fidelity-float weights: int8 per output channel vs fp16 (issue 23).

Why: layers the INT8 plan keeps float for fidelity ran with their original weights stored fp16 + Cast, while
layers kept float for speed already had int8 codes (Cast -> Mul, folded at load). PP-OCRv4 det's INT8 stage
was then 2.93x smaller than the original, under the issue's 3x. The plan now stores those weights as int8
codes when its fidelity target still holds (`quant.float_storage`). This script builds the plan once on a
model and writes the finished plan both ways, then prints per storage: file size (compacted as the
`quantize_int8` stage writes it), worst-output cosine on held-out samples (never calibrated or picked on),
and the speed ratio of the two files and of each vs the FP32 model, timed interleaved in one process by the
measurement core (batch 1, one thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_float_storage.py MODEL.onnx INPUTS.npz \
        --orig ORIGINAL.onnx --calib 32 --held 32

Samples: one seeded permutation of the .npz; the first `--calib` calibrate and judge the plan (its fidelity
feeds), the next `--held` are held out. Memory: one sample at a time per session run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from edgeslim.measure.core import Measurer
from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import name_nodes
from edgeslim.onnxkit.session import session
from edgeslim.quant import int8_plan
from edgeslim.quant.layer_select import WEIGHT_CODES_MIN
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.qdq_shrink import shrink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="FP32 ONNX model the INT8 plan starts from")
    ap.add_argument("inputs", type=Path, help=".npz, one array per model input, samples on axis 0")
    ap.add_argument("--orig", type=Path, default=None, help="original model for the size ratio (default: model)")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--held", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with np.load(a.inputs) as z:  # each key read once (an NpzFile reads the whole array on every access)
        data = {k: z[k] for k in z.files}
    n = len(next(iter(data.values())))
    idx = np.random.default_rng(a.seed).permutation(n)
    cal, held = idx[:a.calib], idx[a.calib:a.calib + a.held]

    def feeds(ix: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [{k: v[i:i + 1].copy() for k, v in data.items()} for i in sorted(ix)]

    model = onnx.load(str(a.model))
    name_nodes(model)
    fp = session(a.model.read_bytes())
    fc, fh = feeds(cal), feeds(held)
    ref_c = [fp.run(None, f) for f in fc]
    ref_h = [fp.run(None, f) for f in fh]
    clock = Measurer(threads=1).clock(fc[0])
    plan = int8_plan.build_plan(model, fc, ref_c, int8_plan.Int8Options(), clock)
    print("\n".join("  " + s for s in plan.notes))
    assert plan.full is not None
    exact = plan.units.nodes(plan.exact_units)
    held_eval = int8_plan.evaluator(fh, ref_h)
    files: dict[str, bytes] = {}
    rows: dict[str, dict] = {}
    every = list(plan.exact_units)
    variants = {"fp16": [], "int8 (all)": every, "chosen": plan.exact_int8}
    with tempfile.TemporaryDirectory() as td:
        for s, units in variants.items():
            m = shrink(keep_float(plan.full, plan.float_nodes, exact=exact, float_model=plan.float_model,
                                  int8_min_elements=WEIGHT_CODES_MIN, exact_int8=plan.units.nodes(units)))[0]
            raw, out = Path(td) / "raw.onnx", Path(td) / f"{len(files)}.onnx"
            onnx.save(m, str(raw))
            size = oq.compact_onnx(raw, out)
            files[s] = out.read_bytes()
            rows[s] = {"size": size, "held_cos": held_eval(m, len(fh)), "units": len(units),
                       "plan_cos": plan.steps.get("exact_storage", {}).get("cosine", {}).get(s.split()[0])}
    orig = (a.orig or a.model).stat().st_size
    t = clock.times({"fp32": a.model.read_bytes(), **files})
    print(f"\n{a.model.name}: {len(plan.int8_units)} layers INT8, {len(plan.float_units)} float "
          f"({len(plan.exact_units)} for fidelity); plan stores {len(plan.exact_int8)} of those int8; original {orig:,} B")
    print(f"{'fidelity-float storage':24} {'int8':>5} {'bytes':>11} {'smaller':>8} {'plan cos':>9} {'held-out cos':>13} "
          f"{'speed vs FP32':>14}")
    for s, r in rows.items():
        sp = clock.ratio(t[s], t["fp32"])
        pc = "-" if r["plan_cos"] is None else f"{r['plan_cos']:.5f}"
        print(f"{s:24} {r['units']:>5} {r['size']:>11,} {orig / r['size']:>7.2f}x {pc:>9} {r['held_cos']:>13.5f} "
              f"{sp.speedup:>13.3f}x")
    for s in ("int8 (all)", "chosen"):
        r = clock.ratio(t[s], t["fp16"])
        print(f"{s} storage vs fp16 storage, same plan: {r.speedup:.3f}x speed (95% CI {1 / r.hi:.3f}-{1 / r.lo:.3f}x, "
              f"{len(t['fp16'])} interleaved rounds); ORT's optimised graph: {_kernels(files[s])}")
    print(f"fp16 storage, ORT's optimised graph: {_kernels(files['fp16'])}")


def _kernels(model: bytes) -> str:
    """Op counts of ONNX Runtime's optimised graph (`extended` level) and the decode chains left in it (Cast or
    DequantizeLinear of an initializer: 0 when ORT folded them at load)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        so.intra_op_num_threads = 1
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath).graph
    inits = {t.name for t in g.initializer}
    left = sum(n.op_type in ("Cast", "DequantizeLinear") and n.input[0] in inits for n in g.node)
    ops = sorted(Counter(n.op_type for n in g.node).items())
    return f"{len(g.node)} nodes {dict(ops)}, decode chains left {left}"


if __name__ == "__main__":
    main()
