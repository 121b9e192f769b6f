"""Structured sensitivity trials on a converted wheel model (issue 23): what one reused copy (the pruned modules'
state restored in place after each trial, `prune.sensitivity._Trials`) saves over a fresh deep copy of the whole
model per trial, and that both give the same curves.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_sensitivity_trials.py --model cls --samples 64

The model is converted as `edgeslim run --inputs` converts it (`run.onnx.convert`, its outputs flattened into one
[N, D] row per sample); the targets are the converted module's own outputs (mean cosine 1 unpruned), split as the
run splits them (`data.unlabelled.teacher_task`, seed 0); the curves use the first `--curve-samples` validation
samples. The two modes run one after the other in this process (the order alternates with `--repeat`); the
table gives per mode the curves' wall time, the seconds spent making the trial copies (a deep copy, or restoring
the pruned modules), their mean per trial in ms, and whether every curve value equals the other mode's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_convert_prune import WHEEL  # noqa: E402
from bench_optimize import write_inputs  # noqa: E402

from edgeslim.data.task import Task  # noqa: E402
from edgeslim.data.unlabelled import teacher_task  # noqa: E402
from edgeslim.prune import sensitivity as sens  # noqa: E402
from edgeslim.run.onnx import convert  # noqa: E402
from edgeslim.train import predict  # noqa: E402


def curves_timed(view: torch.nn.Module, task: Task, ratios: list[float], fresh: bool) -> tuple[dict, float, float, int]:
    """(curves, wall s, s spent making trial copies, trials) with one reused copy, or a fresh copy per trial."""
    spent = [0.0, 0]
    get, done = sens._Trials.get, sens._Trials.done

    def timed_get(self):
        t = time.perf_counter()
        if fresh:
            self.model = None
        m = get(self)
        spent[0] += time.perf_counter() - t
        spent[1] += 1
        return m

    def timed_done(self, changed):
        t = time.perf_counter()
        done(self, None if fresh else changed)
        spent[0] += time.perf_counter() - t

    sens._Trials.get, sens._Trials.done = timed_get, timed_done  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        c = sens.sensitivity_curves(view, task, ratios, "structured")
        wall = time.perf_counter() - t0
    finally:
        sens._Trials.get, sens._Trials.done = get, done  # type: ignore[method-assign]
    return c, wall, float(spent[0]), int(spent[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cls", choices=sorted(WHEEL))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--curve-samples", type=int, default=32)
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs (the order alternates)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    src = WHEEL[a.model]
    npz = Path(f"/tmp/bench_sens_{a.model}_{a.samples}.npz")
    if not write_inputs(src, npz, a.samples):
        raise SystemExit(f"no input preset for {src.name}")
    x = np.load(npz)[np.load(npz).files[0]].astype(np.float32)
    view = convert(src, tuple(x.shape[1:]))
    task = teacher_task(a.model, x, lambda v: predict(view, v))
    task.x_val, task.y_val = task.x_val[: a.curve_samples], task.y_val[: a.curve_samples]
    ratios = [float(r) for r in a.ratios.split(",")]
    rows, ref = [], None
    for i in range(a.repeat):
        for fresh in ((False, True) if i % 2 == 0 else (True, False)):
            c, wall, spent, n = curves_timed(view, task, ratios, fresh)
            same = ref is None or c["layers"] == ref["layers"]
            ref = ref or c
            rows.append(f"| {'fresh deep copy per trial' if fresh else 'one copy, pruned modules restored'} | "
                        f"{n} | {wall:.1f} | {spent:.2f} | {1000 * spent / max(n, 1):.1f} | {'yes' if same else 'NO'} |")
    print(f"{src.name}: {len(task.x_val)} curve samples, ratios {ratios}, "
          f"{sum(p.numel() for p in view.parameters())} parameters")
    print("| trials made by | trials | curves wall s | copy/restore s | per trial ms | same curves |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
