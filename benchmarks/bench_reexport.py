"""Is a converted ONNX model, exported back to ONNX, as fast as the file it came from? Prints one markdown table.

    python benchmarks/bench_reexport.py MODEL.onnx ... --before /path/to/older/checkout [--prune 0.1]

For each one-input model with a preset in `bench_optimize.PRESETS`: the file is converted
(`edgeslim.onnxtorch.onnx_to_torch`) and exported back (`export_converted`, as `run` exports every stage) twice,
once with the edgeslim found at `--before` (the export path before the fix) and once with this checkout; the
same for a copy with `--prune` of the channels of every prunable convolution removed (Torch-Pruning, L2
magnitude, the converted graph's `keep_whole` layers left out; weights saved once and loaded by both exports).
All five files (original, before, after, pruned before, pruned after) are timed in ONE interleaved run
(`edgeslim.measure.latency.interleaved_times`: ONNX Runtime, CPU, batch 1, one thread, all optimisations) on the
first preset input: p50 ms, and in brackets the median over rounds of (this file's time / the original's time in
the same round), which a loaded machine disturbs less than the p50s. Node counts: nodes in the file (Constant nodes left out) and in ONNX Runtime's optimised
graph (`SessionOptions.optimized_model_filepath`), and the convolutions ONNX Runtime runs in its NCHWc layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def export_one(src: str, state: str, out: str, npz: str) -> None:
    """Convert `src`, load `state` (safetensors, '' = as converted), export to `out` (the edgeslim on sys.path)."""
    import onnx
    import torch

    from edgeslim.onnxtorch import export_converted, onnx_to_torch

    torch.set_num_threads(1)
    feeds = dict(np.load(npz))
    module, _ = onnx_to_torch(src)
    if state:
        from safetensors.torch import load_file

        from edgeslim.models.spec import resize_to_state_dict

        sd = load_file(state)
        _resize_transposed(module, sd)  # the checkout before the fix sized transposed convs wrong on reload
        resize_to_state_dict(module, sd)
        module.load_state_dict(sd, strict=True)
    fixed = onnx.load(src, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    res = export_converted(module, feeds, out, dynamic=not fixed)
    print(json.dumps({"parity": max(res["parity_max_abs_diff"].values())}))


def _resize_transposed(module, sd: dict) -> None:
    """Transposed convs resized to the weights in `sd` ([in, out / groups, ...]), as `models.spec` now does."""
    import torch

    for path, m in list(module.named_modules()):
        w = sd.get(f"{path}.weight")
        if isinstance(m, torch.nn.modules.conv._ConvTransposeNd) and w is not None and w.shape != m.weight.shape:
            parent = module.get_submodule(path.rsplit(".", 1)[0]) if "." in path else module
            setattr(parent, path.rsplit(".", 1)[-1], type(m)(
                int(w.shape[0]), int(w.shape[1]) * m.groups, m.kernel_size, stride=m.stride, padding=m.padding,
                output_padding=m.output_padding, groups=m.groups, bias=m.bias is not None, dilation=m.dilation))


def _export(root: Path, src: Path, state: str, out: Path, npz: Path) -> float | str:
    """Parity (max abs error) of the export made with the edgeslim at `root`, or the error's last line."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(HERE), "--export-one", str(src), state, str(out), str(npz)], env=env,
                       capture_output=True, text=True, cwd=root)
    if r.returncode:
        return (r.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return float(json.loads(r.stdout.strip().splitlines()[-1])["parity"])


def _prune(src: Path, npz: Path, ratio: float, out: Path) -> float:
    """Remove `ratio` of the channels of every prunable conv; save the weights; returns the MACs kept (fraction)."""
    import torch
    import torch_pruning as tp
    from safetensors.torch import save_file

    from edgeslim.onnxtorch import keep_whole, onnx_to_torch

    torch.manual_seed(0)
    module, _ = onnx_to_torch(src)
    x = tuple(torch.from_numpy(v) for v in np.load(npz).values())
    macs0, _ = tp.utils.count_ops_and_params(module, x)
    pruner = tp.pruner.MetaPruner(module, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=keep_whole(module))
    pruner.step()
    macs1, _ = tp.utils.count_ops_and_params(module, x)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(out))
    return macs1 / macs0


def _counts(path: Path, tmp: Path) -> tuple[int, int, str]:
    """(nodes in the file without Constant nodes, nodes ONNX Runtime runs, 'NCHWc convs/convs')."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp / "opt.onnx"))
    convs = [n for n in opt.graph.node if n.op_type in ("Conv", "FusedConv")]
    nchwc = sum(1 for n in convs if n.domain == "com.microsoft.nchwc")
    nodes = sum(1 for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type != "Constant")
    return nodes, len(opt.graph.node), f"{nchwc}/{len(convs)}"


TAGS = ("original", "before", "after", "pruned_before", "pruned_after")


def _row(name: str, times: dict[str, np.ndarray], cnt: dict[str, tuple], par: dict[str, float | str],
         kept: float) -> str:
    """One markdown row: p50 ms (median per-round ratio to the original), node counts, parity."""
    def ms(k: str) -> str:
        if k not in times:
            return "failed"
        ratio = np.median(times[k] / times["original"])
        return f"{np.median(times[k]) * 1e3:.2f}" + ("" if k == "original" else f" ({ratio:.3f})")

    def col(i: int, keys: tuple[str, ...]) -> str:
        return " / ".join(str(cnt[k][i]) if k in cnt else "-" for k in keys)

    def err(k: str) -> str:
        v = par[k]
        return f"{v:.2g}" if isinstance(v, float) else "failed"

    return (f"| {name} | {ms('original')} | {ms('before')} | {ms('after')} | {kept:.2f} | {ms('pruned_before')} | "
            f"{ms('pruned_after')} | {col(0, TAGS[:3])} | {col(1, TAGS)} | {col(2, TAGS)} | "
            f"{err('before')}, {err('pruned_before')} / {err('after')}, {err('pruned_after')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--before", type=Path, help="checkout of edgeslim with the export path before the fix")
    ap.add_argument("--prune", type=float, default=0.1, help="fraction of channels removed per prunable conv")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (each file once per round)")
    ap.add_argument("--export-one", nargs=4, metavar=("SRC", "STATE", "OUT", "NPZ"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.export_one:
        export_one(*a.export_one)
        return
    sys.path.insert(0, str(HERE.parent))
    from bench_optimize import write_inputs

    from edgeslim.measure.latency import interleaved_times
    from edgeslim.onnxkit.session import session

    if a.before is None:
        raise SystemExit("--before: the checkout with the export path before the fix is required")
    after_root = HERE.parent.parent
    rev = subprocess.run(["git", "-C", str(a.before), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    print(f"before: {a.before} ({rev}); after: {after_root}; prune {a.prune:.0%} of the channels per prunable conv; "
          f"{a.rounds} interleaved rounds, ONNX Runtime CPU, batch 1, 1 thread\n")
    print("| model | original ms | re-export before ms (ratio) | after ms (ratio) | pruned: MACs kept | "
          "pruned before ms (ratio) | pruned after ms (ratio) | nodes in file (orig / before / after) | "
          "nodes ORT runs (orig / before / after / pruned before / pruned after) | NCHWc convs (same order) | "
          "parity max abs err before (unpruned, pruned) / after |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    for src in a.models:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            full = tmp / "inputs.npz"
            if not write_inputs(src, full, 2):
                print(f"| {src.name} | no input preset |")
                continue
            d = dict(np.load(full))
            if len(d) != 1:
                print(f"| {src.name} | {len(d)} inputs: one-input models only |")
                continue
            npz = tmp / "x.npz"
            np.savez(npz, **{k: v[:1] for k, v in d.items()})
            state = tmp / "pruned.safetensors"
            kept = _prune(src, npz, a.prune, state)
            files = {"original": src}
            par: dict[str, float | str] = {}
            for tag, root, st in (("before", a.before, ""), ("after", after_root, ""),
                                  ("pruned_before", a.before, str(state)), ("pruned_after", after_root, str(state))):
                par[tag] = _export(root, src, st, tmp / f"{tag}.onnx", npz)
                if isinstance(par[tag], str):
                    print(f"note: {src.name} {tag}: {par[tag]}", file=sys.stderr)
                else:
                    files[tag] = tmp / f"{tag}.onnx"
            sess = {k: session(v) for k, v in files.items()}
            feeds = {k: {s.get_inputs()[0].name: next(iter(d.values()))[:1]} for k, s in sess.items()}
            times = {k: np.asarray(v) for k, v in interleaved_times(sess, feeds, rounds=a.rounds,
                                                                     min_rounds=a.rounds).items()}
            cnt = {k: _counts(v, tmp) for k, v in files.items()}

            print(_row(src.name, times, cnt, par, kept), flush=True)


if __name__ == "__main__":
    main()
