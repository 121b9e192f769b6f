"""Sequence models on MNIST-1D: a transformer teacher vs a small GRU student distilled from it, then INT8.

    .venv/bin/python benchmarks/bench_transformers.py --parts seq --out runs/bench_seq   # shared entry point
    .venv/bin/python benchmarks/bench_sequence.py --out runs/bench_seq                    # the same, standalone
    .venv/bin/python benchmarks/bench_sequence.py --quick --out runs/bench_seq_quick      # smoke run, not the claims

1. teacher: the zoo `transformer` (conv stem, 2 pre-norm encoder blocks, dim 64) trained on mnist1d; the
   training time is recorded (the folder is reused when it exists with the same settings).
2. `recipes/seq-distill-gru.yaml` on the teacher through the pipeline (`edgeslim run`): a GRU student
   distilled with logit KD + a generated transfer set, then QAT to INT8.
3. INT8 alternatives on the distilled FP32 student, each an ordinary recipe: `quantize_dynamic`
   (ORT dynamic INT8 of the classifier; the GRU weight-only) and `quantize_int8` (static QDQ, format
   chosen by measuring).
4. One table, teacher vs every student: test accuracy in ONNX Runtime, parameters, MACs, file size,
   ORT p50 latency (all models timed interleaved in one process, one thread) and the *estimated*
   energy per inference on `cortex-m4` and on this host (each with its label, `measure.energy.estimate_label`).
5. The issue-14 check: the recipe's final student within 2 points of the teacher at no more than a
   tenth of the teacher's estimated energy per inference, on both devices.

With `--seq-sweep HIDDEN:TRANSFER:T:EPOCHS,...` it also distils students with other settings from the
same teacher (how the recipe's student was chosen); `--seq-no-recipe` runs only that sweep.
`bench_transformers.py` imports `add_seq_args`, `part_seq` and `seq_summary` from here.
Writes `results.json` and `summary.md` into --out and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeslim import api  # noqa: E402
from edgeslim.data import load_task  # noqa: E402
from edgeslim.fsutil import write_json  # noqa: E402
from edgeslim.measure.energy import estimate_energy  # noqa: E402
from edgeslim.measure.latency import interleaved_latency  # noqa: E402
from edgeslim.onnxkit.session import session  # noqa: E402
from edgeslim.train import TrainConfig  # noqa: E402

RECIPE = ROOT / "recipes" / "seq-distill-gru.yaml"
PTQ = {"dynamic": {"quantize_dynamic": {}}, "static": {"quantize_int8": {}}}


def add_seq_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("seq (MNIST-1D teacher vs GRU student)")
    g.add_argument("--seq-teacher-epochs", type=int, default=100, help="transformer teacher epochs")
    g.add_argument("--seq-recipe", type=Path, default=RECIPE, help="the distill + INT8 recipe to run")
    g.add_argument("--seq-seed", type=int, default=0, help="seed of the recipe run (student init, transfer set)")
    g.add_argument("--seq-latency-seconds", type=float, default=8.0, help="interleaved timing budget (s)")
    g.add_argument("--seq-torch-threads", type=int, default=1, help="PyTorch threads for training (a shared "
                   "2-core VM trains these small models fastest on one)")
    g.add_argument("--seq-no-recipe", action="store_true", help="skip the recipe run (e.g. only the sweep)")
    g.add_argument("--seq-sweep", default="", help="also distil students HIDDEN:TRANSFER:T:EPOCHS,... (TRANSFER 0: "
                   "KD on the labelled set only; T 0: labels alone, no teacher), e.g. 48:0:0:100,48:60000:2:100")


def _teacher(out: Path, epochs: int) -> tuple[Path, float | None]:
    """The trained teacher folder and its training time in s (None when reused from an earlier run)."""
    d = out / f"teacher_transformer_e{epochs}"
    if (d / "spec.json").exists():
        return d, json.loads((d / "spec.json").read_text()).get("extra", {}).get("train_seconds")
    t0 = time.perf_counter()
    api.train("transformer", "mnist1d", d, TrainConfig(epochs=epochs, optimizer="adamw", weight_decay=0.05),
              quiet=True)
    secs = round(time.perf_counter() - t0, 1)
    spec = json.loads((d / "spec.json").read_text())
    spec.setdefault("extra", {})["train_seconds"] = secs
    write_json(d / "spec.json", spec)
    return d, secs


def _quick_recipe(src: Path, out: Path) -> Path:
    """The recipe with few epochs and a small transfer set (smoke runs only)."""
    r = yaml.safe_load(src.read_text())
    r["finetune"] = {"epochs": 1, "lr": 0.001}
    for step in r["passes"]:
        cfg = step.get("distill")
        if cfg is not None:
            cfg["train"] = {"epochs": 2, "lr": 0.003}
            if cfg.get("transfer"):
                cfg["transfer"] = "generate:2000"
    dst = out / "recipe_quick.yaml"
    dst.write_text(yaml.safe_dump(r, sort_keys=False))
    return dst


def _row(name: str, stage: dict, run: Path) -> dict:
    onnx_path = run / stage["onnx"]
    e_m4, e_host = estimate_energy(onnx_path, "cortex-m4"), estimate_energy(onnx_path, "host")
    return {
        "model": name, "accuracy": stage["accuracy"], "params": stage["params"], "macs": stage["macs"],
        "size_bytes": stage["size_bytes"], "arena_bytes": stage.get("arena_bytes"), "onnx": str(onnx_path),
        "energy_mj_cortex_m4": round(e_m4.mj, 5), "latency_ms_cortex_m4": round(e_m4.latency_ms or 0, 3),
        "energy_mj_host": round(e_host.mj, 6), "energy_method_cortex_m4": e_m4.method,
        "energy_method_host": e_host.method,
        "format": stage.get("notes", {}).get("format", "fp32"),
        "stage_seconds": stage.get("seconds"),
    }


def part_seq(args: argparse.Namespace, out: Path) -> dict:
    """The recipe run and its table (unless --seq-no-recipe), plus the student sweep if --seq-sweep."""
    import torch

    torch.set_num_threads(args.seq_torch_threads)  # training threads; ORT timing uses one thread anyway
    out.mkdir(parents=True, exist_ok=True)
    res = {} if args.seq_no_recipe else part_recipe(args, out)
    if args.seq_sweep:
        res["sweep"] = part_sweep(args, out)
    return res


def part_recipe(args: argparse.Namespace, out: Path) -> dict:
    t_epochs = 3 if args.quick else args.seq_teacher_epochs
    tdir, t_secs = _teacher(out, t_epochs)
    recipe = _quick_recipe(args.seq_recipe, out) if args.quick else args.seq_recipe
    run = out / ("run_quick" if args.quick else f"run_seed{args.seq_seed}")
    t0 = time.perf_counter()
    res = api.run(tdir, recipe, "mnist1d", run, seed=args.seq_seed, quiet=True, force=True)
    run_secs = round(time.perf_counter() - t0, 1)
    stages = res["stages"]
    rows = [_row("teacher transformer (fp32)", stages[0], run)]
    distill_i = next(i for i, s in enumerate(stages) if s["name"] == "distill")
    student_dir = run / "stages" / f"{distill_i:02d}_distill"
    for i, s in enumerate(stages[1:], 1):
        rows.append(_row(f"student {s['name']}" + (" (recipe final)" if i == len(stages) - 1 else ""), s, run))
    for name, step in PTQ.items():  # the other INT8 routes from the same distilled FP32 student
        rp, rdir = out / f"ptq_{name}.yaml", out / f"ptq_{name}_seed{args.seq_seed}"
        rp.write_text(yaml.safe_dump({"version": 1, "passes": [step]}))
        shutil.rmtree(rdir, ignore_errors=True)  # a resumed run would keep an earlier student's stages
        r = api.run(student_dir, rp, "mnist1d", rdir, seed=args.seq_seed, quiet=True, force=True)
        rows.append(_row(f"student {name} INT8 (PTQ)", r["stages"][-1], rdir))
    sess = {r["model"]: session(r["onnx"], threads=1) for r in rows}
    x = load_task("mnist1d").x_test[:1].astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sess.items()}
    lat = interleaved_latency(sess, feeds, seconds=args.seq_latency_seconds, per_round=5)
    for r in rows:
        r["latency_ms_p50"] = round(lat[r["model"]].p50_ms, 4)
    teacher, final = rows[0], next(r for r in rows if "recipe final" in r["model"])
    check = {
        "accuracy_gap_points": round((teacher["accuracy"] - final["accuracy"]) * 100, 2),
        "energy_ratio_cortex_m4": round(final["energy_mj_cortex_m4"] / teacher["energy_mj_cortex_m4"], 4),
        "energy_ratio_host": round(final["energy_mj_host"] / teacher["energy_mj_host"], 4),
    }
    check["met"] = bool(check["accuracy_gap_points"] <= 2.0 and check["energy_ratio_cortex_m4"] <= 0.1
                        and check["energy_ratio_host"] <= 0.1)
    return {"teacher_epochs": t_epochs, "teacher_train_seconds": t_secs, "recipe": str(recipe),
            "recipe_seconds": run_secs, "seed": args.seq_seed, "rows": rows, "check": check,
            "stage_seconds": {s["name"]: s.get("seconds") for s in stages}}


def part_sweep(args: argparse.Namespace, out: Path) -> list[dict]:
    """Students distilled from the same teacher with other settings (hidden size, transfer-set size,
    temperature, epochs), as the `distill` pass trains them; test accuracy in PyTorch, energy ratios
    from the exported FP32 student (estimated, cortex-m4 and host)."""
    import torch

    from edgeslim import models
    from edgeslim.deploy.export import export_onnx
    from edgeslim.distill.train import KDSettings, distill_model
    from edgeslim.models.student import build_student
    from edgeslim.train import evaluate, train_model

    tdir, _ = _teacher(out, 3 if args.quick else args.seq_teacher_epochs)
    teacher, tspec = models.load_model(tdir)
    task = load_task("mnist1d")
    export_onnx(teacher, task.input_shape, out / "teacher.onnx")
    e_t = {d: estimate_energy(out / "teacher.onnx", d).mj for d in ("cortex-m4", "host")}
    rows = []
    for item in args.seq_sweep.split(","):
        hidden, transfer, temp, epochs = item.split(":")
        torch.manual_seed(0)
        student, _ = build_student(tspec, overrides={"model": "gru", "hidden": int(hidden), "frame": 4})
        train = TrainConfig(epochs=int(epochs), lr=0.003)
        t0 = time.perf_counter()
        if float(temp) == 0:  # T = 0: the same student on the labels alone, no teacher
            train_model(student, task, train, quiet=True)
        else:
            distill_model(student, [teacher], task, train, KDSettings(
                temperature=float(temp), alpha=0.9, transfer=None if transfer == "0" else f"generate:{transfer}"),
                quiet=True)
        secs = round(time.perf_counter() - t0, 1)
        export_onnx(student, task.input_shape, out / f"sweep_{hidden}.onnx")
        row = {"hidden": int(hidden), "transfer": int(transfer), "temperature": float(temp), "epochs": int(epochs),
               "test_accuracy": round(evaluate(student, task.x_test, task.y_test), 4),
               "teacher_test_accuracy": round(evaluate(teacher, task.x_test, task.y_test), 4), "seconds": secs,
               **{f"energy_ratio_{d}": round(estimate_energy(out / f"sweep_{hidden}.onnx", d).mj / e_t[d], 4)
                  for d in e_t}}
        print(row, flush=True)
        rows.append(row)
    return rows


def sweep_summary(rows: list[dict]) -> str:
    lines = ["| GRU hidden | transfer set | T | epochs | student test acc | teacher test acc | est. energy / teacher "
             "(cortex-m4, host) | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        temp = f"{r['temperature']:g}" if r["temperature"] else "labels only"
        lines.append(f"| {r['hidden']} | {r['transfer']:,} | {temp} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.1f}% | {100 * r['teacher_test_accuracy']:.1f}% | "
                     f"{r['energy_ratio_cortex-m4']:.3f}, {r['energy_ratio_host']:.3f} | {r['seconds']} |")
    return "\n".join(lines)


def seq_summary(res: dict) -> str:
    parts = [recipe_summary(res)] if "rows" in res else []
    if res.get("sweep"):
        parts.append("Students distilled from the same teacher (GRU, 4 samples a step, alpha 0.9, lr 0.003, seed 0):\n\n"
                     + sweep_summary(res["sweep"]))
    return "\n\n".join(parts)


def recipe_summary(res: dict) -> str:
    lines = [
        f"MNIST-1D teacher vs distilled GRU student (recipe {Path(res['recipe']).name}, seed {res['seed']}; "
        f"teacher {res['teacher_epochs']} epochs, trained in {res['teacher_train_seconds']} s; recipe run "
        f"{res['recipe_seconds']} s). Accuracy: ONNX Runtime on the 1,000 test signals. Latency: ORT p50, batch 1, "
        "1 thread, all models interleaved in one process. Energy per inference: estimated (analytic model).",
        "",
        "| model | format | test acc | params | MACs | size (B) | ORT p50 (ms) | est. mJ cortex-m4 | est. ms cortex-m4 "
        "| est. mJ host |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['format']} | {100 * r['accuracy']:.1f}% | {r['params']:,} | {r['macs']:,} | "
            f"{r['size_bytes']:,} | {r['latency_ms_p50']:.4f} | {r['energy_mj_cortex_m4']:.4f} | "
            f"{r['latency_ms_cortex_m4']:.2f} | {r['energy_mj_host']:.5f} |")
    c = res["check"]
    lines += ["", f"Issue 14 check (recipe final vs teacher): accuracy gap {c['accuracy_gap_points']:+.2f} points "
              f"(<= 2), estimated energy ratio {c['energy_ratio_cortex_m4']:.3f} on cortex-m4 and "
              f"{c['energy_ratio_host']:.3f} on host (<= 0.1): {'MET' if c['met'] else 'NOT MET'}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_seq"))
    ap.add_argument("--quick", action="store_true", help="few epochs, small transfer set (smoke test, not the claims)")
    add_seq_args(ap)
    args = ap.parse_args()
    res = {"machine": platform.platform(), "seq": part_seq(args, args.out)}
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    text = seq_summary(res["seq"])
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
