"""Where does a model's static INT8 error come from? Prints a table (issue 23, PP-OCRv4 rec's int8 plan).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_int8_diag.py RUN_DIR [--feeds 8] [--search] [--per-unit]

RUN_DIR is a finished `edgeslim run recipes/any-model.yaml` folder (its stage before quantize_int8 is the float
model; its inputs file `RUN_DIR.inputs.npz` beside it). Only non-held-out inputs are used (the test split's
samples, stored in RUN_DIR/splits/test.npz, are removed by value). Every figure is measured here on the
calibration-like inputs: the score is the plan's (the lower of the worst output's cosine and top-1 agreement).

Rows: the fully quantized model as the plan builds it (MSE ranges, bias correction); weight-only int8 (float
compute, int8 weight codes); the same two with GPTQ-rounded weights (`quant.gptq`'s grid, re-quantized by ORT's
quantizer) and with GPTQ codes written on ORT's own scale; only the Conv / only the MatMul units INT8. --search: the end-to-end range search (`quant.range_search`)
and the fidelity fallback's float count (target 0.99) without and with it. --per-unit: each unit alone in INT8
(the rest float) and each unit alone float (the rest INT8), on the first 4 feeds.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit import quant as oq
from edgeslim.onnxkit.graph import name_nodes
from edgeslim.onnxkit.session import session
from edgeslim.quant import calib_select, gptq
from edgeslim.quant.bias_correction import correct_biases
from edgeslim.quant.int8_plan import Int8Options, evaluator, prepare_float, quantize
from edgeslim.quant.layer_select import fidelity_fallback, units
from edgeslim.quant.qdq_float import keep_float
from edgeslim.quant.range_search import Limits, search_ranges, unit_sensitivity


def gptq_in_qdq(q: onnx.ModelProto, fm: onnx.ModelProto, feeds: list) -> tuple[onnx.ModelProto, int]:
    """`q` with GPTQ codes (`quant.gptq`, H from `fm`'s inputs) written into its int8 weight initializers on ORT's
    own per-channel scale (no second rounding); a layer keeps its codes where GPTQ's H-weighted error is not lower."""
    out = onnx.ModelProto()
    out.CopyFrom(q)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    fnodes = {n.name: n for n in fm.graph.node}
    fw = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
    todo = []
    for n in g.node:
        f = fnodes.get(n.name)
        dq = prod.get(n.input[1]) if len(n.input) > 1 else None
        if f is None or dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        w = fw.get(f.input[1])
        if w is not None and gptq.supported(f, w):
            todo.append((f, dq, w))
    hs = gptq.hessians(fm, feeds, [f for f, _, _ in todo], {f.name: w for f, _, w in todo})
    done = 0
    for f, dq, w in todo:
        scale = numpy_helper.to_array(inits[dq.input[1]]).reshape(-1, 1).astype(np.float32)
        mat, h = gptq._matrix(f, w), hs[f.name]
        if scale.shape[0] != mat.shape[0]:
            continue
        codes = gptq._with_scale(mat, h, gptq.DAMP, gptq.BLOCK, scale)
        old = gptq._matrix(f, numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32))
        if gptq._rel_error(mat, codes * scale, h) < gptq._rel_error(mat, old * scale, h):
            new = gptq._layout(f, codes.astype(np.float32), w.shape).astype(np.int8)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new, dq.input[0]))
            done += 1
    return out, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--feeds", type=int, default=8, help="batches of 16 inputs scored")
    ap.add_argument("--per-unit", action="store_true")
    ap.add_argument("--search", action="store_true", help="range search and the fallback's float count (slow)")
    a = ap.parse_args()
    stages = sorted(glob.glob(str(a.run_dir / "stages" / "*")))
    src = next(Path(s) / "model.onnx" for s in reversed(stages) if "quantize_int8" not in s)
    x = np.load(str(a.run_dir) + ".inputs.npz")
    test = np.load(a.run_dir / "splits" / "test.npz")
    name = next(iter(x.files))
    xs, ts = x[name], test[name]
    held = {t.tobytes() for t in ts}
    keep = np.array([s.tobytes() not in held for s in xs])
    xs = xs[keep]
    rng = np.random.default_rng(0)
    xs = xs[rng.permutation(len(xs))][: 16 * a.feeds]
    work = Path("/tmp") / f"diag_{os.getpid()}.onnx"
    oq.preprocess(src, work)
    model = onnx.load(str(work))
    name_nodes(model)
    inp = model.graph.input[0].name
    feeds = [{inp: xs[i:i + 16]} for i in range(0, len(xs), 16)]
    print(f"model {src}, {len(xs)} non-held-out inputs in {len(feeds)} feeds")
    opts = Int8Options()
    fm = prepare_float(model, opts, [])
    fp = session(fm.SerializeToString())
    ref = [fp.run(None, f) for f in feeds]
    ev = evaluator(feeds, ref)
    n = len(feeds)
    t0 = time.perf_counter()
    stats = calib_select.collect(fm, feeds, seed=0)
    ranges = calib_select.choose_calibration(stats, None, ("mse",))[0]
    qm, _ = correct_biases(fm, feeds, ranges)
    fmt = "u8s8-pc"
    q = quantize(qm, feeds, fmt, ranges, opts)
    us = units(q)
    rows: list[tuple[str, float]] = [("full INT8 (MSE ranges, bias correction)", ev(q, n))]
    every = us.nodes(us.quant)
    rows.append(("weight-only int8 (float compute)", ev(keep_float(q, every, min_elements=1, float_model=fm), n)))
    rounded = gptq.grid_weights(qm, feeds, min_elements=16)
    qg = quantize(gptq.with_grid(qm, rounded, rounded), feeds, fmt, ranges, opts)
    rows.append((f"full INT8, GPTQ weight codes ({len(rounded)} layers)", ev(qg, n)))
    rows.append(("weight-only, GPTQ codes", ev(keep_float(qg, every, min_elements=1, float_model=fm), n)))
    qd, k = gptq_in_qdq(q, fm, feeds)
    rows.append((f"full INT8, GPTQ codes on ORT's scale ({k} layers)", ev(qd, n)))
    rows.append(("weight-only, GPTQ codes on ORT's scale", ev(keep_float(qd, every, min_elements=1, float_model=fm), n)))
    for op in sorted(set(us.op.values())):
        other = [u for u in us.quant if us.op[u] != op]
        k = sum(1 for u in us.quant if us.op[u] == op)
        rows.append((f"only the {k} {op} units INT8", ev(keep_float(q, us.nodes(other), exact=us.nodes(other),
                                                                   float_model=fm), n)))
    print("\n| configuration | score (min of cosine, top-1 agreement) |\n|---|---|")
    for r, s in rows:
        print(f"| {r} | {s:.4f} |")
    if a.per_unit:  # each unit alone in INT8 (the rest float), and each unit alone float (the rest INT8)
        p = min(4, n)  # on the first 4 feeds, as the plan's fallback ranks units
        alone = unit_sensitivity(q, fm, us, ev, p)
        base = ev(q, p)
        loo = {u: ev(keep_float(q, us.nodes([u]), exact=us.nodes([u]), float_model=fm), p) - base for u in us.quant}
        print("\n| unit | op | alone in INT8: 1 - score | it alone float: score gain |\n|---|---|---|---|")
        for u in sorted(us.quant, key=lambda u: -alone[u]):
            print(f"| {u} | {us.op[u]} | {alone[u]:.4f} | {loo[u]:+.4f} |")
    if a.search:  # the range search, and the fidelity fallback's float count without and with it (target 0.99)
        qr = lambda r: quantize(qm, feeds, fmt, r, opts)  # noqa: E731
        rs = search_ranges(qm, feeds, ranges, rows[0][1], qr, ev, Limits(probe_feeds=min(4, n), max_seconds=1e9))
        print("\n" + rs.note())
        print("\n| ranges | full INT8 score | float units for 0.99 | of | bisection |\n|---|---|---|---|---|")
        for what, qq in (("calibrated (MSE)", q), ("searched end to end", qr(rs.ranges))):
            uq = units(qq)
            fb = fidelity_fallback(qq, fm, uq, ev, 0.99, probe_feeds=min(4, n), full_feeds=n)
            trail = ", ".join(f"{k} -> {c:.4f}" for k, c in fb.trail)
            print(f"| {what} | {fb.trail[0][1]:.4f} | {len(fb.float_units)} | {len(uq.quant)} | {trail} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
