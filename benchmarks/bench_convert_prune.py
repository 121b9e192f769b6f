"""ONNX in, pruned ONNX out, on the seven wheel models of docs/benchmarks.md (issue 23): each file is converted
(`edgeslim.onnxtorch`), 50% of the channels of every prunable layer group are removed in one shot by the run's
pruner (no fine-tuning: this measures what pruning can take, not accuracy), the pruned module is exported back
to ONNX, and the exported file must run and match the pruned module.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_convert_prune.py            # the seven wheel models
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_convert_prune.py --models cls,common --seconds 2

Pruner: one-input models go through `prune.structured.make_pruner` on `run.onnx.TeacherView` (exactly what
`structured_prune: {ratio: 0.5}` builds in `edgeslim run --inputs`; per sample when the batch is fixed at 1);
models with several inputs (the VADs' audio, state and sample rate) through Torch-Pruning's `MetaPruner` on the
module with the same kept-whole layers (`onnxtorch.keep_whole`) and the same flattened-channel mapping
(`map_flattened_channels`). Importance L2, ratio 0.5 per group.

Per model: parameters and MACs of one batch-1 call (Conv/Linear/LSTM layers by forward hooks; the ONNX counter
does not see into the VADs' If bodies) of the converted module before/after; ONNX Runtime p50 latency, batch 1, one thread, of the original file,
the unpruned re-export and the pruned export (sizes of the same three files: a re-export keeps only the If branch
the sample takes, e.g. the VADs' 16 kHz branch), timed interleaved in one loop (`measure.core.compare_latency`);
export check = max abs error of ONNX Runtime on the pruned export vs the pruned module over all samples (tolerance
1e-3 x max(1, |output|)); "ok" or "fail" with the first line of the error. Inputs: `bench_optimize.write_inputs`
presets (seed 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_optimize import write_inputs  # noqa: E402

from edgeslim.measure.core import compare_latency  # noqa: E402
from edgeslim.onnxkit.inputs import Feed, input_specs, load_npz_feeds  # noqa: E402
from edgeslim.onnxkit.load import read_onnx  # noqa: E402
from edgeslim.onnxkit.session import session  # noqa: E402
from edgeslim.onnxtorch import export_converted, keep_whole, onnx_to_torch  # noqa: E402
from edgeslim.onnxtorch.parity import max_abs, torch_outputs  # noqa: E402
from edgeslim.prune.structured import make_pruner, map_flattened_channels  # noqa: E402
from edgeslim.run.onnx import TeacherView  # noqa: E402

M = Path("/work/thirdparty/models")
WHEEL = {  # the seven wheel models of docs/benchmarks.md's `optimize` table
    "cls": M / "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "det": M / "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "rec": M / "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "common": M / "ddddocr/common.onnx",
    "common_det": M / "ddddocr/common_det.onnx",
    "vad": M / "silero_vad/data/silero_vad.onnx",
    "vad_op15": M / "silero_vad/data/silero_vad_16k_op15.onnx",
}


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module, feed: Feed) -> int:
    """MACs of one call on `feed` (batch 1 here), counted by forward hooks on the Conv/Linear/LSTM/GRU layers (the
    whole output, so a head whose batch is not on axis 0, common.onnx's [T, 1, C], counts every time step)."""
    from edgeslim.models.counts import recurrent_macs

    total = 0

    def hook(m: torch.nn.Module, inp: tuple, out) -> None:
        nonlocal total
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            total += out.numel() * int(np.prod(m.kernel_size)) * (m.in_channels // m.groups)
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features
        else:  # nn.RNNBase, input [T, B, I] (the converter's layout)
            x = inp[0]
            total += recurrent_macs(m, int(x.shape[0])) * (int(x.shape[1]) if x.dim() == 3 else 1)

    kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.RNNBase)
    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    try:
        torch_outputs(module, module.input_names, feed)
    finally:
        for h in hs:
            h.remove()
    return total


def prune(module, feed: Feed, ratio: float) -> str:
    """Prune `module` in place as the run does; returns which pruner was used."""
    import torch_pruning as tp

    names = list(module.input_names)
    if len(names) == 1:
        x = np.asarray(feed[names[0]])
        view = TeacherView(module, per_sample=x.shape[0] == 1 and module.dynamic_axes.get(names[0], {}).get(0) is None)
        pruner, steps = make_pruner(view.eval(), tuple(x.shape[1:]), ratio=ratio, importance="l2")
        for _ in range(steps):
            pruner.step()
        return "make_pruner(TeacherView)"
    args = tuple(torch.from_numpy(np.array(feed[n], copy=True)) for n in names)
    pr = tp.pruner.MetaPruner(module, args, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                              ignored_layers=keep_whole(module))
    map_flattened_channels(pr.DG)
    pr.step()
    return "MetaPruner(keep_whole)"


def sensitivity_check(module, feed: Feed, ratio: float) -> str:
    """The structural half of `any-model.yaml`'s `sensitivity_prune` (mode structured) on a one-input model: every
    candidate layer (`prune.sensitivity.candidate_layers`) pruned alone at `ratio` on a copy, replayed from one
    dependency graph (`prune_one_structured(..., dg=, source=)`), and the copy run on the sample; then the final
    pruner with those per-layer ratios (`make_pruner(layer_ratios=...)`). Returns "n/m trials ran" or the
    failures. Fidelity is not looked at (no teacher targets here)."""
    import copy
    from types import SimpleNamespace

    import torch_pruning as tp

    from edgeslim.prune.sensitivity import candidate_layers, prune_one_structured
    from edgeslim.prune.structured import map_flattened_channels

    names = list(module.input_names)
    x = np.asarray(feed[names[0]])
    view = TeacherView(module, per_sample=x.shape[0] == 1 and module.dynamic_axes.get(names[0], {}).get(0) is None)
    task = SimpleNamespace(input_shape=tuple(x.shape[1:]))
    dg = tp.DependencyGraph().build_dependency(view, torch.zeros(2, *task.input_shape))
    map_flattened_channels(dg)
    cands = candidate_layers(view, task, "structured")  # type: ignore[arg-type]
    bad = []
    for name, _ in cands:
        trial = copy.deepcopy(view)
        try:
            prune_one_structured(trial, name, ratio, task, dg=dg, source=view)  # type: ignore[arg-type]
            with torch.no_grad():
                trial(torch.from_numpy(x))
        except Exception as e:  # noqa: BLE001
            bad.append(f"{name}: {type(e).__name__}")
    pruner, _ = make_pruner(view, task.input_shape, ratio=0.5, importance="l2",
                            layer_ratios={n: ratio for n, _ in cands})
    pruner.step()
    with torch.no_grad():
        view(torch.from_numpy(x))
    return f"{len(cands) - len(bad)}/{len(cands)} trials ran" + (f"; failed: {', '.join(bad[:3])}" if bad else "")


def run_one(key: str, src: Path, tmp: Path, n: int, ratio: float, seconds: float, sens: bool = False) -> dict:
    npz = tmp / f"{key}.npz"
    write_inputs(src, npz, n, seed=0)
    feeds = load_npz_feeds(npz, input_specs(read_onnx(src)))
    row: dict = {"model": src.name}
    try:
        t0 = time.perf_counter()
        module, _ = onnx_to_torch(src)
        row["convert_s"] = time.perf_counter() - t0
        dynamic = bool(module.dynamic_axes)
        row["params"] = [params(module), None]
        row["macs"] = [macs(module, feeds[0]), None]
        conv = export_converted(module, feeds[0], tmp / f"{key}.conv.onnx", dynamic=dynamic)
        if sens and len(module.input_names) == 1:
            t0 = time.perf_counter()
            row["sensitivity"] = sensitivity_check(onnx_to_torch(src)[0], feeds[0], ratio)
            row["sensitivity"] += f" ({time.perf_counter() - t0:.0f} s)"
        t0 = time.perf_counter()
        row["pruner"] = prune(module, feeds[0], ratio)
        row["prune_s"] = time.perf_counter() - t0
        row["params"][1] = params(module)
        row["macs"][1] = macs(module, feeds[0])
        pruned = export_converted(module, feeds[0], tmp / f"{key}.pruned.onnx", dynamic=dynamic)
        sess = session(pruned["path"], threads=1)
        keep = {i.name for i in sess.get_inputs()}
        errs = []
        for f in feeds:  # the exported file vs the pruned module, every sample
            ref = torch_outputs(module, module.input_names, f)
            got = sess.run(None, {k: v for k, v in f.items() if k in keep})
            errs += [max_abs(r, g) / max(1.0, float(np.abs(r).max())) for r, g in zip(ref, got)]
        row["export_err"] = max(errs)
        row["bytes"] = [src.stat().st_size, conv["size_bytes"], pruned["size_bytes"]]
        lat = compare_latency({"original": src, "converted": conv["path"], "pruned": pruned["path"]}, feeds[0],
                              threads=1, seconds=seconds)
        row["p50"] = [lat[k].p50_ms for k in ("original", "converted", "pruned")]
        row["status"] = "ok" if row["export_err"] <= 1e-3 else f"fail: export differs by {row['export_err']:.3g}"
    except Exception as e:  # noqa: BLE001 - the table reports every model's failure in one line
        print(traceback.format_exc(limit=-3), file=sys.stderr)
        row["status"] = f"fail: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return row


def fmt(row: dict) -> str:
    def pair(k: str, f) -> str:
        v = row.get(k)
        if not v or v[1] is None:
            return "-"
        if not v[0]:
            return f"{f(v[0])} -> {f(v[1])}"
        return f"{f(v[0])} -> {f(v[1])} ({v[1] / v[0]:.2f}x)"

    b = row.get("bytes")
    size = f"{b[0] / 1024:,.0f} / {b[1] / 1024:,.0f} / {b[2] / 1024:,.0f} KiB ({b[2] / b[1]:.2f}x)" if b else "-"
    p50 = row.get("p50")
    lat = (f"{p50[0]:.3f} / {p50[1]:.3f} / {p50[2]:.3f} | {p50[0] / p50[2]:.2f}x" if p50 else "- | -")
    err = f"{row['export_err']:.2g}" if "export_err" in row else "-"
    return (f"| {row['model']} | {pair('params', lambda x: f'{x / 1e3:,.1f}k')} | {pair('macs', lambda x: f'{x / 1e6:,.1f}M')} "
            f"| {size} | {lat} | {err} | {row.get('prune_s', 0):.1f} "
            f"| {row['status']} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(WHEEL), help=f"comma-separated keys of {list(WHEEL)}")
    ap.add_argument("--samples", type=int, default=4, help="input samples per model for the export check")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    ap.add_argument("--seconds", type=float, default=3.0, help="interleaved timing per model, s")
    ap.add_argument("--sensitivity", action="store_true", help="also run the structural check of sensitivity_prune "
                    "(every candidate layer pruned alone, then the per-layer pruner) on one-input models")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in WHEEL]
    if bad:
        print(f"unknown model keys {bad}; valid: {', '.join(WHEEL)}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for k in keys:
            print(f"== {k}: {WHEEL[k]}", file=sys.stderr, flush=True)
            rows.append(run_one(k, WHEEL[k], Path(td), args.samples, args.ratio, args.seconds, args.sensitivity))
            print(fmt(rows[-1]), file=sys.stderr, flush=True)
    print("| model | params | MACs (b1 call) | ONNX size original / re-export / pruned (pruned / re-export) | p50 ms original / "
          "re-export / pruned (b1, 1 thread, interleaved) | speed-up vs original | export vs pruned module "
          "(max rel err) | prune s | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(fmt(r))
    for r in rows:
        if "sensitivity" in r:
            print(f"- {r['model']}: sensitivity_prune (structured) trials at {args.ratio:g}: {r['sensitivity']}")
    ok = sum(r["status"] == "ok" for r in rows)
    sp = [r["p50"][0] / r["p50"][2] for r in rows if r.get("p50")]
    gm = float(np.exp(np.mean(np.log(sp)))) if sp else float("nan")
    print(f"\n{ok} of {len(rows)} prune {args.ratio:.0%} one-shot and re-export with parity; geometric-mean speed-up "
          f"of the pruned export over the original file (no fine-tuning): {gm:.2f}x")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
