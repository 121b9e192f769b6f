"""Do a run's picks hold on inputs it never saw? Each finished `edgeslim run ... --inputs` folder's last stage is
compared with its original on fresh inputs: the preset generators of `bench_optimize.write_inputs` with a seed the
run did not use, in each `--styles` (the run's own style, and another one: a shift of the input distribution).
Nothing here trains, calibrates or picks: the figures are the measurement core's fidelity (`api.measure` with a
`reference`): worst-output cosine (each output judged on its own), top-1 agreement for score outputs, IoU of the
thresholded maps for dense outputs. Prints one markdown row per run and style beside the run's own held-out figure.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_fresh_inputs.py runs/t10/cls/ch_ppocr_mobile_v2.0_cls_infer \\
        --samples 128 --seed 101 --styles text,glyphs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import write_inputs  # noqa: E402

from edgeslim import api  # noqa: E402


def worst(fid: dict) -> tuple[float, float | None, float | None]:
    """(worst-output cosine, lowest top-1 agreement, lowest map IoU) over the outputs."""
    per = fid.get("per_output") or {"": fid}
    cos = min(v["cosine"] for v in per.values())
    top1 = [v["top1_agreement"] for v in per.values() if v.get("top1_agreement") is not None]
    iou = [v["map_iou"] for v in per.values() if v.get("map_iou") is not None]
    return cos, (min(top1) if top1 else None), (min(iou) if iou else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="finished run folders (results.json inside)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=101, help="a seed the runs' inputs were not made with")
    ap.add_argument("--styles", default="text,glyphs")
    a = ap.parse_args(argv)
    print("| run | inputs | samples | worst-output cosine | top-1 agreement | map IoU | run's held-out cosine / top-1 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    fmt = lambda v, p=".4f": "-" if v is None else format(v, p)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for run in a.runs:
            res = json.loads((run / "results.json").read_text())
            original, last = Path(res["model"]), res["stages"][-1]
            held = last["fidelity"]
            for style in a.styles.split(","):
                npz = Path(tmp) / f"{run.name}_{style}.npz"
                if not write_inputs(original, npz, a.samples, seed=a.seed, style=style):
                    print(f"| {run} | {style}: no preset for {original.name} | - | - | - | - | - |")
                    continue
                row = api.measure([run / last["onnx"]], reference=original, inputs=npz, runs=3)[0]
                cos, top1, iou = worst(row["fidelity"])
                print(f"| {run.name} ({last['name']}) | {style}, seed {a.seed} | {row['fidelity']['samples_compared']} | "
                      f"{cos:.4f} | {fmt(top1, '.1%')} | {fmt(iou)} | {held['cosine']:.4f} / "
                      f"{fmt(held.get('top1_agreement'), '.1%')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
