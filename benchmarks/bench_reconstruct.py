"""Least-squares reconstruction after structured pruning (`edgeslim.prune.reconstruct`) on third-party ONNX
models: each file is converted (`edgeslim.onnxtorch`), pruned uniformly by L2 norm at each ratio (the run's
pruner, `make_pruner` on `run.onnx.TeacherView`), and the layers are refitted to the original's layer outputs
on the first two thirds of the inputs (at most `--fit-samples`); the table gives the mean per-sample cosine to
the original's outputs on the last third (never fitted on) before and after the refit, and the refit's seconds.
No labels, no gradient steps. Inputs from `bench_optimize.write_inputs` presets (seed 0).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reconstruct.py --ratios 0.1,0.3,0.5 \
        /work/thirdparty/models/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import write_inputs  # noqa: E402

from edgeslim.onnxtorch import onnx_to_torch  # noqa: E402
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct  # noqa: E402
from edgeslim.prune.structured import make_pruner  # noqa: E402
from edgeslim.run.onnx import TeacherView  # noqa: E402
from edgeslim.train import teacher_cosine  # noqa: E402


def run_model(src: Path, ratios: list[float], n: int, fit_samples: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "x.npz"
        if not write_inputs(src, npz, n, seed=0):
            return [f"| {src.name} | no input preset | | | | |"]
        d = np.load(npz)
        x = d[d.files[0]].astype(np.float32)
    conv, _ = onnx_to_torch(src)
    if len(conv.input_names) != 1:
        return [f"| {src.name} | several inputs: not in this table | | | | |"]
    teacher = TeacherView(conv).eval()
    fit, held = x[: 2 * len(x) // 3], x[2 * len(x) // 3:]
    with torch.no_grad():
        ref = teacher(torch.from_numpy(held)).numpy()
    rows = []
    for r in ratios:
        student = copy.deepcopy(teacher)
        pruner, _ = make_pruner(student, tuple(x.shape[1:]), ratio=r, importance="l2")
        kept = prune_recording(pruner, student)
        with torch.no_grad():
            before = teacher_cosine(student(torch.from_numpy(held)).numpy(), ref)
        rec = reconstruct(student, teacher, kept, fit, Reconstruct(samples=fit_samples))
        with torch.no_grad():
            after = teacher_cosine(student(torch.from_numpy(held)).numpy(), ref)
        rows.append(f"| {src.name} | {r:g} | {before:.4f} | {after:.4f} | {len(rec['refitted'])}/{rec['layers']} "
                    f"({rec['rel_error_before']} -> {rec['rel_error_after']}) | {rec['seconds']:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--ratios", default="0.1,0.3,0.5", help="uniform channel ratios, comma-separated")
    ap.add_argument("--samples", type=int, default=96, help="input samples written per model")
    ap.add_argument("--fit-samples", type=int, default=64)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    print("| model | ratio | held-out cosine, pruned | after the refit | layers refitted (mean layer error on "
          "held-out rows) | refit s |")
    print("|---|---:|---:|---:|---|---:|")
    for m in a.models:
        for row in run_model(m, [float(r) for r in a.ratios.split(",")], a.samples, a.fit_samples):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
