"""Where a 2-D CNN's ONNX Runtime call goes, and what the rewrites `onnxkit.cheap_cnn` left out would give
(issue 23). For one model file (weights stored int8 + Cast + Mul folded to FP32 first, as ONNX Runtime does when
it loads them), timed interleaved in one process (ONNX Runtime, batch 1, one thread) on the first sample of
`--inputs`:

- `as given`;
- `static shapes`: the input's dims fixed to the sample's shape (ONNX Runtime can then prove residual Adds' inputs
  equal and fuse them into the NCHWc convs; the file would no longer take other image sizes);
- `no SE scale` (an upper bound, NOT the same function): every Mul(x, HardSigmoid/Sigmoid(...)) replaced by x, what
  the squeeze-excitation blocks cost at most;
- `SE into conv` (static shapes): Mul(x, s [N, C, 1, 1]) -> 1x1 Conv written as MatMul(W * s, x [N, C, H W]) + b
  (the scale folded into the projection weight per call).

Prints kernels per call, max abs difference against `as given` and p50 for each, then ONNX Runtime's profile of
the file as given by op type (the profiler inflates small kernels: read it for shares, not times).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_cnn_probes.py MODEL.onnx --inputs X.npz --seconds 20
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def static_shapes(m, feed: dict[str, np.ndarray]) -> None:
    """Fix every graph input's dims to the feed's shape (in place); drop stale intermediate shapes."""
    for i in m.graph.input:
        if i.name in feed:
            for d, v in zip(i.type.tensor_type.shape.dim, feed[i.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    del m.graph.value_info[:]


def drop_se_scale(m) -> int:
    """Readers of Mul(x, HardSigmoid/Sigmoid(...)) read x instead (changes the function: an upper bound)."""
    from edgeslim.onnxkit.graph import remove_dead, rename_reads

    prod = {o: n for n in m.graph.node for o in n.output}
    k = 0
    for n in list(m.graph.node):
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for j in (0, 1):
            p = prod.get(n.input[j])
            if p is not None and p.op_type in ("HardSigmoid", "Sigmoid") and p.input[0] != n.input[1 - j]:
                rename_reads(m.graph, {n.output[0]: n.input[1 - j]})
                k += 1
                break
    remove_dead(m)
    return k


def se_into_conv(m) -> int:
    """Mul(x, s [N, C, 1, 1]) read only by a 1x1 Conv (group 1) -> MatMul(W * s, x rows) + b, static shapes."""
    from onnx import helper, numpy_helper

    from edgeslim.onnxkit.consts import Consts, attr
    from edgeslim.onnxkit.graph import consumers, insert_before, remove_dead
    from edgeslim.onnxkit.static_shapes import symbolic_dims

    g = m.graph
    dims, c, rd = symbolic_dims(m), Consts(g), consumers(g)
    before: dict[int, list] = {}
    nodes = list(g.node)  # held: insert_before finds them by id()
    k = 0
    for mul in nodes:
        r = rd.get(mul.output[0], [])
        if mul.op_type != "Mul" or len(r) != 1 or r[0].op_type != "Conv" or int(attr(r[0], "group", 1)) != 1:
            continue
        conv = r[0]
        w = c.get(conv.input[1])
        b = c.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        x, s = mul.input
        if (dims.get(s) or [0, 0, 0])[2:] != [1, 1]:
            x, s = s, x
        dx = dims.get(x)
        if w is None or w.shape[2:] != (1, 1) or (dims.get(s) or [0, 0, 0])[2:] != [1, 1] or dx is None \
                or not all(isinstance(v, int) for v in dx) or any(int(p) for p in attr(conv, "pads", [0] * 4)):
            continue
        _, ch, h, wd = dx
        co, p = w.shape[0], f"se_into_conv{k}_"
        k += 1
        bias = b if b is not None else np.zeros(co, np.float32)
        g.initializer.extend([numpy_helper.from_array(w.reshape(1, co, ch).astype(np.float32), p + "w"),
                              numpy_helper.from_array(np.array([0, 1, ch], np.int64), p + "s_shape"),
                              numpy_helper.from_array(np.array([0, ch, h * wd], np.int64), p + "x_shape"),
                              numpy_helper.from_array(np.array([0, co, h, wd], np.int64), p + "y_shape"),
                              numpy_helper.from_array(bias.reshape(co, 1).astype(np.float32), p + "b")])
        before[id(conv)] = [helper.make_node("Reshape", [s, p + "s_shape"], [p + "s1"]),  # [N, 1, C]
                            helper.make_node("Mul", [p + "w", p + "s1"], [p + "ws"]),  # [N, Co, C]
                            helper.make_node("Reshape", [x, p + "x_shape"], [p + "xf"]),  # [N, C, H W]
                            helper.make_node("MatMul", [p + "ws", p + "xf"], [p + "mm"]),  # [N, Co, H W]
                            helper.make_node("Add", [p + "mm", p + "b"], [p + "mmb"])]
        conv.op_type = "Reshape"  # [N, Co, H, W]: the conv's output, same name
        del conv.attribute[:]
        conv.input[:] = [p + "mmb", p + "y_shape"]
    insert_before(g, before)
    remove_dead(m)
    return k


def profile_by_op(data: bytes, feed: dict[str, np.ndarray], calls: int = 200) -> list[tuple[str, float, float]]:
    """(op, kernels per call, share of profiled kernel time) from ONNX Runtime's profiler, largest first."""
    import onnxruntime as ort

    from edgeslim.onnxkit.ort_options import session_options

    with tempfile.TemporaryDirectory() as td:
        o = session_options(1)
        o.enable_profiling, o.profile_file_prefix = True, str(Path(td) / "p")
        s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            s.run(None, feed)
        ev = json.loads(Path(s.end_profiling()).read_text())
    t: collections.Counter = collections.Counter()
    n: collections.Counter = collections.Counter()
    for e in ev:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            t[e["args"]["op_name"]] += e["dur"]
            n[e["args"]["op_name"]] += 1
    tot = sum(t.values()) or 1
    return [(op, n[op] / calls, v / tot) for op, v in t.most_common()]


def main() -> None:
    import onnx
    from bench_cheap_ops import fold_weight_casts
    from bench_view_chains import kernels_per_call

    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.onnxkit.session import session

    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--inputs", type=Path, required=True, help="an .npz of the model's inputs: its first sample is fed")
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    with np.load(a.inputs) as z:
        feed = {k: z[k][:1] for k in z.files}
    m0 = onnx.load(str(a.model))
    fold_weight_casts(m0)
    variants: dict[str, tuple[bytes, int]] = {"as given": (m0.SerializeToString(), 0)}
    for name, steps in [("static shapes", ()), ("no SE scale", (drop_se_scale,)), ("SE into conv", (se_into_conv,))]:
        m = onnx.ModelProto()
        m.CopyFrom(m0)
        if name != "no SE scale":
            static_shapes(m, feed)
        k = sum(f(m) for f in steps)
        variants[name] = (m.SerializeToString(), k)
    sess = {n: session(d, threads=1) for n, (d, _) in variants.items()}
    ref = sess["as given"].run(None, feed)
    lat = interleaved_latency(sess, {n: feed for n in sess}, seconds=a.seconds, per_round=20)
    t0 = lat["as given"].p50_ms
    print("| variant | rewrites | kernels per call | max abs diff | p50 | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, (d, k) in variants.items():
        diff = max(float(np.max(np.abs(x - y))) for x, y in zip(ref, sess[n].run(None, feed)))
        print(f"| {n} | {k} | {kernels_per_call(d, feed)} | {diff:.2g} | {lat[n].p50_ms * 1e3:.1f} us | "
              f"{t0 / lat[n].p50_ms:.3f}x |")
    print("\n| op (as given) | kernels per call | share of profiled kernel time |\n|---|---:|---:|")
    for op, n_, share in profile_by_op(variants["as given"][0], feed):
        print(f"| {op} | {n_:.0f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
