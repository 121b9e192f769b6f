"""GPTQ vs round-to-nearest int8 weight codes on one float ONNX model (`quant.gptq`), weight-only: the chosen layers'
weights int8 (per output channel), everything else float, compute FP32. Prints a markdown table: relative output
error summed over the layers (on the calibration samples' inputs), and on other samples the top-1 agreement
(last axis, per position) and cosine of the first output vs the float model.

    OMP_NUM_THREADS=1 python benchmarks/bench_gptq.py RUN/stages/02_distill_outputs/model.onnx RUN.inputs.npz \
        --report RUN/stages/03_quantize_int8/quant_report.json --held-out RUN/splits/test.npz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeslim.onnxkit.session import session
from edgeslim.quant import gptq, int8_plan


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("inputs", type=Path, help="npz, one array per model input, samples on axis 0")
    ap.add_argument("--report", type=Path, help="quant_report.json: only its fidelity floats (else every layer)")
    ap.add_argument("--calib", type=int, default=64, help="samples for H (the first ones)")
    ap.add_argument("--check", type=int, default=64, help="samples scored (the last ones)")
    ap.add_argument("--held-out", type=Path, help="a run's splits/test.npz: those samples are left out of both")
    a = ap.parse_args(argv)
    fm = int8_plan.prepare_float(onnx.load(str(a.model)), int8_plan.Int8Options(), [])
    data = dict(np.load(a.inputs))
    n = len(next(iter(data.values())))
    feeds = [{k: v[i:i + 1] for k, v in data.items()} for i in range(n)]
    if a.held_out:  # the test split is never calibrated or scored on here
        test = dict(np.load(a.held_out))
        seen = {b"".join(test[k][i].tobytes() for k in sorted(test)) for i in range(len(next(iter(test.values()))))}
        feeds = [f for f in feeds if b"".join(f[k][0].tobytes() for k in sorted(f)) not in seen]
        print(f"{n - len(feeds)} held-out samples left out")
        n = len(feeds)
    cal, chk = feeds[:a.calib], feeds[n - a.check:]
    want = None
    if a.report:
        fl = json.loads(a.report.read_text())["int8_plan"]["float_layers"]
        want = {k for k, v in fl.items() if v.startswith("fidelity")}
    inits = {t.name: numpy_helper.to_array(t) for t in fm.graph.initializer}
    nodes = [x for x in fm.graph.node if (want is None or x.name in want) and len(x.input) > 1
             and x.input[1] in inits and inits[x.input[1]].size >= 16 and gptq.supported(x, inits[x.input[1]])]
    ws = {x.name: inits[x.input[1]] for x in nodes}
    t0 = time.perf_counter()
    hs = gptq.hessians(fm, cal, nodes, ws)
    print(f"{len(nodes)} layers; Hessians from {len(cal)} samples in {time.perf_counter() - t0:.1f} s; "
          f"scored on {len(chk)} samples")
    ref_s = session(fm.SerializeToString())
    ref = [ref_s.run(None, f)[0] for f in chk]
    print("| rounding | relative output error, sum over layers | top-1 agreement per position | cosine |")
    print("|---|---:|---:|---:|")
    for name in ("round-to-nearest", "GPTQ"):
        weights, errs = {}, []
        for x in nodes:
            r = gptq.round_layer(x, ws[x.name], hs[x.name])
            errs.append(r.rtn_error if name == "round-to-nearest" else r.error)
            if name == "GPTQ":
                weights[x.name] = r
            else:
                m = gptq._matrix(x, ws[x.name])
                amax = np.abs(m).max(axis=1, keepdims=True)
                s = np.where(amax > 0, amax / 127.0, 1.0)
                w = gptq._layout(x, np.clip(np.rint(m / s), -127, 127) * s, ws[x.name].shape)
                weights[x.name] = gptq.Rounded(w.astype(np.float32), 0.0, 0.0)
        s = session(gptq.with_grid(fm, weights, list(weights)).SerializeToString())
        out = [s.run(None, f)[0] for f in chk]
        agree = np.mean(np.concatenate([(o.argmax(-1) == r.argmax(-1)).ravel() for o, r in zip(out, ref)]))
        u, v = np.concatenate([o.ravel() for o in out]), np.concatenate([r.ravel() for r in ref])
        cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        print(f"| {name} | {sum(errs):.2e} | {agree:.4f} | {cos:.5f} |", flush=True)


if __name__ == "__main__":
    main()
