"""Function matching after structured pruning on a third-party ONNX model, with different training views:
the file is converted (`edgeslim.onnxtorch`), pruned uniformly by L2 norm at `--ratio` (`make_pruner`), refitted
by least squares (`prune.reconstruct`, 64 samples, at most 120 s), then each setting `crop/batch/lr` trains a copy
by function matching (`distill.matching`) for `--seconds`; one row per setting: steps done, the output loss, the
validation score (mean cosine to the original; the best step is kept) before and after, and the held-out score.
Inputs: `bench_optimize.write_inputs` presets (160 samples: 112 train, 24 validation, 24 held out).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_matching.py --ratio 0.1 --seconds 90 \
        /work/thirdparty/models/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx 0.5/8/1e-4 1.0/32/1e-4
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

from bench_optimize import STYLES, write_inputs  # noqa: E402

from edgeslim.data.task import Task  # noqa: E402
from edgeslim.distill.matching import Matching, match  # noqa: E402
from edgeslim.onnxtorch import onnx_to_torch  # noqa: E402
from edgeslim.prune.reconstruct import Reconstruct, prune_recording, reconstruct  # noqa: E402
from edgeslim.prune.structured import make_pruner  # noqa: E402
from edgeslim.run.onnx import TeacherView  # noqa: E402
from edgeslim.train import teacher_cosine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("settings", nargs="+", help="crop/batch/lr, e.g. 0.5/8/1e-4")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--probabilities", choices=("kl", "mse"), default="kl")
    ap.add_argument("--style", choices=STYLES, default="glyphs")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "x.npz"
        if not write_inputs(a.model, npz, 160, seed=0, style=a.style):
            print(f"{a.model.name}: no input preset")
            return 1
        d = np.load(npz)
        x = d[d.files[0]].astype(np.float32)
    conv, _ = onnx_to_torch(a.model)
    teacher = TeacherView(conv).eval()
    tr, va, te = x[:112], x[112:136], x[136:]
    with torch.no_grad():
        yv, yt = teacher(torch.from_numpy(va)).numpy(), teacher(torch.from_numpy(te)).numpy()
        ytr = np.concatenate([teacher(torch.from_numpy(tr[i:i + 16])).numpy() for i in range(0, len(tr), 16)])
    base = copy.deepcopy(teacher)
    pruner, _ = make_pruner(base, tuple(x.shape[1:]), ratio=a.ratio, importance="l2")
    kept = prune_recording(pruner, base)
    rec = reconstruct(base, teacher, kept, tr, Reconstruct(samples=64, max_seconds=120))
    with torch.no_grad():
        held0 = teacher_cosine(base(torch.from_numpy(te)).numpy(), yt)
    print(f"{a.model.name}, uniform ratio {a.ratio:g}, reconstruction {len(rec['refitted'])}/{rec['layers']} layers "
          f"in {rec['seconds']:.0f} s: held-out cosine {held0:.4f}; {a.seconds:g} s of matching per row")
    print("| crop / batch / lr | steps | output loss | val before | val best | held-out |")
    print("|---|---:|---|---:|---:|---:|")
    task = Task("inputs", tr, ytr, va, yv, te, yt, 0)
    for s in a.settings:
        c, b, lr = s.split("/")
        st = copy.deepcopy(base)
        out = match(st, teacher, task, Matching(max_steps=100000, max_seconds=a.seconds, batch_size=int(b),
                                                 crop=float(c), lr=float(lr), eval_every=25,
                                                 probabilities=a.probabilities), quiet=True)
        with torch.no_grad():
            held = teacher_cosine(st(torch.from_numpy(te)).numpy(), yt)
        crop = "x".join(map(str, out["crop"])) if "crop" in out else "full"
        print(f"| {crop} / {b} / {lr} | {out['steps']} | {out['output_loss']} | {out['val_score_before']:.4f} | "
              f"{out['val_score']:.4f} | {held:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
