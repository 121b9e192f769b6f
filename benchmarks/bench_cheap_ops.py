"""Per-call latency of ONNX files before/after `onnxkit.cheap_ops.cheapen_ops` (issue 23), each rule alone and
the default rules together (what `export_converted` applies). Weights stored int8 + Cast + Mul (weight-only
storage) are folded to FP32 first in the rewritten copies only (ONNX Runtime folds them when a session loads, so
the "before" file, timed as given, runs the same FP32 weights). For each file and variant: rewrites applied,
nodes, kernels ONNX Runtime runs per call, max abs difference of every output against the file as given
(batch 1) and median latency, all variants timed interleaved in one process (ONNX Runtime, batch 1, one thread;
the first sample of `--inputs X.npz`, else the preset inputs of `bench_optimize.write_inputs` where the model has
one, else random normal floats and int inputs 16000). `--rules a,b` times only those variants (and the
default rules together).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_cheap_ops.py MODEL.onnx [MODEL.onnx ...] --seconds 20

`--inputs X.npz` feeds the first sample of that file instead (a run's stage files keep symbolic image sizes,
which the preset and random feeds would fill with 1: time them on the run's own inputs). `--rules a,b` times
only those rules alone (and the default rules); `a+b` times rules a and b applied together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fold_weight_casts(model) -> int:
    """Cast(initializer) -> Mul(initializer) chains, and Cast(initializer) of float16 weights to float32, written
    as one FP32 initializer (in place); returns how many."""
    import onnx
    from onnx import numpy_helper

    from edgeslim.onnxkit.consts import Consts, attr
    from edgeslim.onnxkit.graph import remove_dead

    g = model.graph
    consts = Consts(g)
    prod = {o: n for n in g.node for o in n.output if o}
    done = 0
    for n in list(g.node):
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        c = prod.get(n.input[0])
        s = consts.get(n.input[1])
        if c is None or c.op_type != "Cast" or s is None or consts.get(c.input[0]) is None:
            continue
        w = consts.get(c.input[0]).astype(np.float32) * s.astype(np.float32)
        g.initializer.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
        g.node.remove(n)
        done += 1
    for n in list(g.node):  # a weight stored float16 (+ Cast to float32)
        v = consts.get(n.input[0]) if n.op_type == "Cast" and len(n.input) == 1 else None
        if v is None or v.dtype != np.float16 or attr(n, "to", 0) != onnx.TensorProto.FLOAT:
            continue
        g.initializer.append(numpy_helper.from_array(v.astype(np.float32), n.output[0]))
        g.node.remove(n)
        done += 1
    remove_dead(model)
    return done


def preset_feed(path: Path) -> dict[str, np.ndarray] | None:
    """One sample of the realistic synthetic inputs `bench_optimize.write_inputs` makes for a preset model (the
    OCR models take text images of their own sizes), else None."""
    import tempfile

    from bench_optimize import write_inputs

    with tempfile.TemporaryDirectory() as td:
        dst = Path(td) / "x.npz"
        if not write_inputs(path, dst, 1):
            return None
        with np.load(dst) as z:
            return {k: z[k][:1] for k in z.files}


def main() -> None:
    import onnx
    from bench_view_chains import feeds, kernels_per_call

    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.onnxkit.cheap_ops import DEFAULT_RULES, RULES, cheapen_ops
    from edgeslim.onnxkit.session import session

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--inputs", type=Path, default=None,
                    help="an .npz of the models' inputs (samples on axis 0; the first sample is timed)")
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated rules timed alone, a+b: together (default: every rule alone)")
    a = ap.parse_args()
    given = None
    if a.inputs is not None:
        with np.load(a.inputs) as z:
            given = {k: z[k][:1] for k in z.files}
    print("| model | variant | rewrites | nodes | kernels per call | max abs diff | p50 | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for p in a.models:
        m0 = onnx.load(str(p))
        f = given or preset_feed(p) or feeds(m0, 1)
        variants: dict[str, tuple[bytes, int, int]] = {"as given": (m0.SerializeToString(), 0, len(m0.graph.node))}
        for name, rules in [*((r, tuple(r.split("+"))) for r in a.rules.split(",") if r),
                            ("default rules", DEFAULT_RULES)]:
            m = onnx.ModelProto()
            m.CopyFrom(m0)
            fold_weight_casts(m)
            k = sum(cheapen_ops(m, rules=rules).values())
            variants[name] = (m.SerializeToString(), k, len(m.graph.node))
        sess = {n: session(d, threads=1) for n, (d, _, _) in variants.items()}
        ref = sess["as given"].run(None, f)
        lat = interleaved_latency(sess, {n: f for n in sess}, seconds=a.seconds, per_round=20)
        t0 = lat["as given"].p50_ms * 1e3
        for n, (d, k, nodes) in variants.items():
            diff = max(float(np.max(np.abs(x - y))) for x, y in zip(ref, sess[n].run(None, f)))
            t = lat[n].p50_ms * 1e3
            print(f"| {'/'.join(p.parts[-4:])} | {n} | {k} | {nodes} | {kernels_per_call(d, f)} | {diff:.2g} | "
                  f"{t:.1f} us | {t0 / t:.3f}x |")


if __name__ == "__main__":
    main()
