"""ONNX -> PyTorch conversion (edgeslim.onnxtorch) on real third-party models: does each convert, with what parity,
and does the converted module go back to ONNX (and through Torch-Pruning) intact?

    PYTHONPATH=. python benchmarks/bench_onnxtorch.py /work/thirdparty/models/rapidocr_onnxruntime/models/*.onnx \\
        /work/thirdparty/models/ddddocr/common.onnx /work/thirdparty/models/ddddocr/common_det.onnx \\
        /work/thirdparty/models/silero_vad/data/silero_vad{,_16k_op15,_op18_ifless}.onnx

Inputs: `bench_optimize.write_inputs` presets (structured synthetic glyph images / gated tone audio; N(0,1) for
other models at their declared shapes). Per model it prints: op count (nodes incl. subgraphs) and distinct op
types, conversion time (s, one run), parameters, parity = max abs error of the torch module vs ONNX Runtime per
output over all samples, with the output's max |value| for scale; re-export = the module exported back with
`export_converted` (traced at sample 0), then ONNX Runtime on the exported file vs the ORIGINAL file over all
samples (max abs error); streamed = for models with recurrent state (an input and an output of the same
shape) the samples run in order with the state fed back, ORT and torch each on their own state; prune = Torch-Pruning's MetaPruner removing 30% of the channels of every layer except
`unprunable_layers(module)` (output, recurrent and head-split layers; L2 magnitude, no fine-tuning), then
the output shapes compared with the unpruned ones and the pruned module exported and run in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_optimize import write_inputs  # noqa: E402

from edgeslim.onnxkit.inputs import Feed, input_specs, load_npz_feeds, synthetic_feeds  # noqa: E402
from edgeslim.onnxkit.load import read_onnx  # noqa: E402
from edgeslim.onnxkit.session import session  # noqa: E402
from edgeslim.onnxtorch import export_converted, onnx_to_torch, unprunable_layers  # noqa: E402
from edgeslim.onnxtorch.parity import max_abs, torch_outputs  # noqa: E402


def feeds_for(src: Path, tmp: Path, n: int, seed: int) -> list[Feed]:
    specs = input_specs(read_onnx(src))
    npz = tmp / f"{src.stem}.npz"
    if write_inputs(src, npz, n, seed=seed):
        return load_npz_feeds(npz, specs)
    return synthetic_feeds(specs, {}, n, seed, None)[0]


def prune_check(module: torch.nn.Module, feed: Feed, out: Path) -> str:
    """30% of the inner convs' channels removed by Torch-Pruning; the pruned module exported and checked."""
    import torch_pruning as tp

    args = tuple(torch.from_numpy(np.array(feed[n], copy=True)) for n in module.input_names)
    before = sum(p.numel() for p in module.parameters())
    shapes = [o.shape for o in torch_outputs(module, module.input_names, feed)]
    try:
        pr = tp.pruner.MetaPruner(module, args, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                                  ignored_layers=unprunable_layers(module))
        pr.step()
        res = export_converted(module, feed, out)
    except Exception as e:
        return f"fails ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    after = sum(p.numel() for p in module.parameters())
    same = [o.shape for o in torch_outputs(module, module.input_names, feed)] == shapes
    return (f"{'ok' if same else 'OUTPUT SHAPES CHANGED'}: params {after / before:.2f}x, re-export err "
            f"{max(res['parity_max_abs_diff'].values()):.2g}")


def stream_check(module: torch.nn.Module, sess, feeds: list[Feed], ref: list[list[np.ndarray]]) -> str:
    """Models with recurrent state (an input and an output of the same shape, the output named after the input
    where several fit): the samples run in order with the state carried, ONNX Runtime and torch each feeding
    back their own state; worst abs error over the run."""
    names = [o.name for o in sess.get_outputs()]
    pairs: list[tuple[str, int]] = []
    for k, v in feeds[0].items():
        v = np.asarray(v)
        same = [i for i, r in enumerate(ref[0]) if v.dtype.kind == "f" and v.ndim >= 2 and r.shape == v.shape
                and i not in {j for _, j in pairs}]
        named = [i for i in same if names[i].startswith(k)]  # state -> stateN, h -> hn
        if same:
            pairs.append((k, (named or same)[0]))
    if not pairs or len(feeds) < 2:
        return "-"
    st_o = {k: feeds[0][k] for k, _ in pairs}
    st_t = dict(st_o)
    worst = 0.0
    for f in feeds:
        a = sess.run(None, {**f, **st_o})
        b = torch_outputs(module, module.input_names, {**f, **st_t})
        worst = max([worst] + [max_abs(x, y) for x, y in zip(a, b)])
        st_o = {k: a[i] for k, i in pairs}
        st_t = {k: b[i] for k, i in pairs}
    return f"{worst:.2g} over {len(feeds)} steps ({', '.join(f'{k} <- {names[i]}' for k, i in pairs)})"


def run_one(src: Path, tmp: Path, n: int, seed: int, prune: bool) -> dict:
    feeds = feeds_for(src, tmp, n, seed)
    row: dict = {"model": src.name}
    t0 = time.perf_counter()
    try:
        module, report = onnx_to_torch(src, input_shapes={k: v.shape for k, v in feeds[0].items()})
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return row
    row["convert_s"] = time.perf_counter() - t0
    row["nodes"], row["op_types"] = sum(report.ops.values()), len(report.ops)
    row["params"] = report.parameters
    sess = session(str(src))
    names = [o.name for o in sess.get_outputs()]
    ref = [sess.run(None, f) for f in feeds]
    got = [torch_outputs(module, module.input_names, f) for f in feeds]
    row["parity"] = {k: max(max_abs(r[i], g[i]) for r, g in zip(ref, got)) for i, k in enumerate(names)}
    row["scale"] = {k: max(float(np.abs(r[i]).max()) for r in ref) for i, k in enumerate(names)}
    try:
        exp = export_converted(module, feeds[0], tmp / f"{src.stem}.torch.onnx", dynamic=True)
        back = session(exp["path"])
        inn = {i.name for i in back.get_inputs()}
        errs = [max_abs(a, b) for f, r in zip(feeds, ref)
                for a, b in zip(r, back.run(None, {k: v for k, v in f.items() if k in inn}))]
        row["reexport"] = f"ok: {max(errs):.2g} vs original"
    except Exception as e:
        row["reexport"] = f"fails ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    row["stream"] = stream_check(module, sess, feeds, ref)
    if prune:
        row["prune"] = prune_check(module, feeds[0], tmp / f"{src.stem}.pruned.onnx")
    row["notes"] = report.notes
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=4, help="input samples per model for the parity checks")
    ap.add_argument("--no-prune", action="store_true", help="skip the Torch-Pruning check")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for i, src in enumerate(args.models):
            print(f"== {src}", file=sys.stderr, flush=True)
            rows.append(run_one(src, Path(td), args.samples, i, not args.no_prune))
    print("| model | nodes (op types) | convert s | params | parity: max abs err per output (output max abs) | "
          "re-export to ONNX (ORT vs original) | streamed, state carried: max abs err | Torch-Pruning 30% + re-export |")
    print("|---|---|---|---|---|---|---|---|")
    ok = 0
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | - | - | - | **fails**: {r['error']} | - | - | - |")
            continue
        par = ", ".join(f"{k}: {v:.2g} ({r['scale'][k]:.3g})" for k, v in r["parity"].items())
        ok += all(v <= 1e-3 * max(1.0, r["scale"][k]) for k, v in r["parity"].items())
        print(f"| {r['model']} | {r['nodes']} ({r['op_types']}) | {r['convert_s']:.2f} | {r['params']:,} | {par} | "
              f"{r['reexport']} | {r['stream']} | {r.get('prune', '-')} |")
    print(f"\n{ok} of {len(rows)} models convert with parity (max abs err <= 1e-3 x max(1, output max abs))")
    for r in rows:
        for note in r.get("notes", []):
            print(f"- {r['model']}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
