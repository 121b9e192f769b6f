"""Distillation, low-rank and weight-sharing benchmark on the built-in tasks.

    .venv/bin/python benchmarks/bench_distill.py --out runs/bench_distill            # everything
    .venv/bin/python benchmarks/bench_distill.py --parts deep,lowrank --quick       # a fast smoke run

Parts:
- kd:      a half-width student (student builder, width 0.5) trained on labels alone vs the same student,
           same seeds and schedule, trained with logit KD from the full-width teacher; mean over seeds.
           With --transfer (e.g. generate:20000 on mnist1d) KD also matches the teacher on unlabelled
           inputs, and two controls run per seed: labels alone for the KD run's whole compute, and KD
           without the transfer set. The issue's >= 1 point figure (docs/benchmarks.md):
           --parts kd --kd-task mnist1d --kd-model cnn1d --kd-width 16 --epochs 200 --temperature 2
           --transfer generate:20000 --seeds 5
- dpq:     recipes/distill-prune-quantize.yaml on the kd teacher (KD stays on while pruning fine-tunes).
- deep:    recipes/deep-compression.yaml on LeNet-300-100: prune, cluster, entropy-code; the .eshare file
           is loaded back (load_shared_model) and evaluated; compression = dense fp32 bytes / file bytes.
- lowrank: truncated-SVD factorisation of LeNet-300-100's hidden layers + fine-tuning; MACs and accuracy.

Writes `results.json` and `summary.md` into --out and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeslim import api, models  # noqa: E402
from edgeslim.data import load_task  # noqa: E402
from edgeslim.data.transfer import default_ratio, load_transfer  # noqa: E402
from edgeslim.distill.train import distill_model  # noqa: E402
from edgeslim.formats.eshare import load_shared_model  # noqa: E402
from edgeslim.models.student import build_student  # noqa: E402
from edgeslim.passes.distill import Distill, kd_settings  # noqa: E402
from edgeslim.train import Hooks, TrainConfig, evaluate, train_model  # noqa: E402

LOWRANK = """version: 1
finetune: {epochs: %d, lr: 0.001}
passes:
  - lowrank: {compression: %s, skip: [fc3]}
"""


def _baseline(out: Path, model: str, task: str, epochs: int, **kw) -> Path:
    # the folder names the width and epochs too, so a rerun with other teacher settings never reuses a teacher
    tag = "".join(f"_{k}{v}" for k, v in kw.items()) + (f"_e{epochs}" if kw else "")
    d = out / f"baseline_{model}_{task}{tag}"
    if not (d / "spec.json").exists():
        api.train(model, task, d, TrainConfig(epochs=epochs), quiet=True, **kw)
    return d


def part_kd(args, out: Path) -> dict:
    t = load_task(args.kd_task)
    kw = {"width": args.kd_width} if args.kd_model != "lenet300" else {}
    tdir = _baseline(out, args.kd_model, args.kd_task, args.epochs, **kw)
    teacher, spec = models.load_model(tdir)
    rows = []
    ratio = 0
    if args.transfer:
        ratio = default_ratio(len(load_transfer(args.transfer, t.name, t.input_shape)), len(t.x_train))
    for seed in range(args.seeds):
        cfg = TrainConfig(epochs=args.student_epochs or args.epochs, seed=seed)
        torch.manual_seed(seed)
        s_lab, sspec = build_student(spec, 0.5)
        train_model(s_lab, t, cfg, quiet=True)
        torch.manual_seed(seed)
        s_kd, _ = build_student(spec, 0.5)
        feats = [tuple(f.split(":")) for f in args.features.split(",") if f]
        dcfg = Distill(temperature=args.temperature, alpha=args.alpha, train=cfg, features=feats,  # type: ignore[arg-type]
                       feature_weight=args.feature_weight, mixup=args.mixup, transfer=args.transfer)
        distill_model(s_kd, [teacher], t, dcfg.train, kd_settings(dcfg), quiet=True)
        rows.append({"seed": seed, "labels": evaluate(s_lab, t.x_test, t.y_test),
                     "kd": evaluate(s_kd, t.x_test, t.y_test),
                     "labels_val": evaluate(s_lab, t.x_val, t.y_val), "kd_val": evaluate(s_kd, t.x_val, t.y_val)})
        if args.transfer:
            # controls: the same KD without the transfer set, and labels alone trained as long as KD computes
            # (each KD step runs the student on 1 + ratio times as many inputs)
            torch.manual_seed(seed)
            s_plain, _ = build_student(spec, 0.5)
            distill_model(s_plain, [teacher], t, dcfg.train, replace(kd_settings(dcfg), transfer=None), quiet=True)
            torch.manual_seed(seed)
            s_long, _ = build_student(spec, 0.5)
            train_model(s_long, t, cfg.model_copy(update={"epochs": cfg.epochs * (1 + ratio)}), quiet=True)
            rows[-1] |= {"kd_no_transfer": evaluate(s_plain, t.x_test, t.y_test),
                         "labels_long": evaluate(s_long, t.x_test, t.y_test),
                         "labels_long_val": evaluate(s_long, t.x_val, t.y_val)}
        if args.mixup:  # control: the same mixed inputs, labelled by mixing the labels instead of the teacher
            torch.manual_seed(seed)
            s_mix, _ = build_student(spec, 0.5)
            train_model(s_mix, t, cfg, Hooks(loss=_mixup_ce(args.mixup, args.alpha, seed)), quiet=True)
            rows[-1]["labels_mixup"] = evaluate(s_mix, t.x_test, t.y_test)
        print(f"[kd] seed {seed}: {rows[-1]}", flush=True)
    lab = [r["labels"] for r in rows]
    mix = [r["labels_mixup"] for r in rows if "labels_mixup" in r]
    kd = [r["kd"] for r in rows]
    return {
        "task": args.kd_task, "teacher": spec["kwargs"] | {"arch": spec["arch"]}, "student": sspec["kwargs"],
        "teacher_accuracy": evaluate(teacher, t.x_test, t.y_test),
        "temperature": args.temperature, "alpha": args.alpha, "epochs": cfg.epochs, "teacher_epochs": args.epochs,
        "seeds": rows,
        "labels_val_mean": statistics.mean(r["labels_val"] for r in rows),
        "kd_val_mean": statistics.mean(r["kd_val"] for r in rows),
        "features": args.features, "feature_weight": args.feature_weight, "mixup": args.mixup,
        "labels_mixup_mean": statistics.mean(mix) if mix else None,
        "labels_mixup_std": statistics.pstdev(mix) if mix else None,
        "transfer": args.transfer, "transfer_ratio": ratio or None,
        **({"labels_long_epochs": cfg.epochs * (1 + ratio),
            "labels_long_mean": statistics.mean(r["labels_long"] for r in rows),
            "labels_long_std": statistics.pstdev(r["labels_long"] for r in rows),
            "kd_no_transfer_mean": statistics.mean(r["kd_no_transfer"] for r in rows),
            "kd_no_transfer_std": statistics.pstdev(r["kd_no_transfer"] for r in rows),
            "gain_vs_labels_long_points": 100 * (statistics.mean(kd) - statistics.mean(r["labels_long"] for r in rows)),
            } if args.transfer else {}),
        "labels_mean": statistics.mean(lab), "kd_mean": statistics.mean(kd),
        "labels_std": statistics.pstdev(lab), "kd_std": statistics.pstdev(kd),
        "gain_points": 100 * (statistics.mean(kd) - statistics.mean(lab)),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in s_kd.parameters()),
    }


def _mixup_ce(beta: float, alpha: float, seed: int):
    import torch.nn.functional as F

    from edgeslim.distill.kd import mix_inputs

    gen = torch.Generator().manual_seed(seed)

    def loss(model, x, y, out):
        if not model.training:
            return F.cross_entropy(out, y)
        xm, perm, lam = mix_inputs(x, gen, beta)
        om = model(xm)
        mixed = lam * F.cross_entropy(om, y) + (1 - lam) * F.cross_entropy(om, y[perm])
        return alpha * mixed + (1 - alpha) * F.cross_entropy(out, y)

    return loss


def part_dpq(args, out: Path) -> dict:
    kw = {"width": args.kd_width} if args.kd_model != "lenet300" else {}
    tdir = _baseline(out, args.kd_model, args.kd_task, args.epochs, **kw)
    res = api.run(tdir, ROOT / "recipes" / "distill-prune-quantize.yaml", args.kd_task, out / "run_dpq",
                  quiet=True, force=True)
    return {"stages": [_stage(s) for s in res["stages"]]}


def _stage(s: dict) -> dict:
    return {k: s.get(k) for k in ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes")}


def part_deep(args, out: Path) -> dict:
    base = _baseline(out, "lenet300", args.deep_task, args.epochs_lenet)
    res = api.run(base, ROOT / "recipes" / "deep-compression.yaml", args.deep_task, out / "run_deep",
                  quiet=True, force=True)
    st = res["stages"]
    last = st[-1]
    eshare = out / "run_deep" / "stages" / f"{len(st) - 1:02d}_entropy_code" / "model.eshare"
    model, _ = load_shared_model(eshare)
    t = load_task(args.deep_task)
    reload_acc = evaluate(model, t.x_test, t.y_test)
    n = last["notes"]
    return {
        "task": args.deep_task, "stages": [_stage(s) for s in st],
        "baseline_accuracy": st[0]["accuracy"], "final_accuracy": last["accuracy"],
        "reloaded_accuracy": reload_acc, "drop_points": 100 * (st[0]["accuracy"] - last["accuracy"]),
        "file_bytes": last["size_bytes"], "dense_fp32_bytes": n["dense_fp32_bytes"],
        "compression": n["dense_fp32_bytes"] / last["size_bytes"],
        "breakdown": {k: n[k] for k in ("codebook_bytes", "index_bytes", "position_bytes", "table_bytes",
                                         "raw_bytes", "header_bytes")},
        "nonzero_weights": last["nonzero_params"], "bits_per_nonzero_weight": n["bits_per_nonzero_weight"],
    }


def part_lowrank(args, out: Path) -> dict:
    base = _baseline(out, "lenet300", args.deep_task, args.epochs_lenet)
    rec = out / "lowrank.yaml"
    rec.write_text(LOWRANK % (args.ft_epochs, args.lowrank_compression))
    res = api.run(base, rec, args.deep_task, out / "run_lowrank", quiet=True, force=True)
    b, lr = res["stages"]
    return {
        "task": args.deep_task, "compression": args.lowrank_compression,
        "layers": [{k: r.get(k) for k in ("layer", "shape", "rank", "energy", "macs_before", "macs_after", "skipped")}
                   for r in lr["notes"]["layers"]],
        "baseline_accuracy": b["accuracy"], "accuracy": lr["accuracy"],
        "drop_points": 100 * (b["accuracy"] - lr["accuracy"]),
        "macs_before": b["macs"], "macs_after": lr["macs"], "mac_reduction": b["macs"] / lr["macs"],
        "params_before": b["params"], "params_after": lr["params"],
        "latency_ms_p50_before": b["latency_ms_p50"], "latency_ms_p50_after": lr["latency_ms_p50"],
    }


def summary(res: dict) -> str:
    lines = [f"Machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
             f"{res['seconds']:.0f} s in all.", ""]
    if "kd" in res:
        k = res["kd"]
        lines += [
            f"**KD** ({k['task']}; teacher {k['teacher']} {100 * k['teacher_accuracy']:.2f}%, "
            f"{k['teacher_params']:,} params; student {k['student']}, {k['student_params']:,} params; "
            f"T={k['temperature']}, alpha={k['alpha']}, {k['epochs']} student epochs "
            f"({k.get('teacher_epochs', k['epochs'])} teacher epochs), {len(k['seeds'])} seeds"
            + (f"; feature KD {k['features']} x {k['feature_weight']}" if k["features"] else "") + ")", "",
            "| seed | labels only (test) | KD (test) | labels only (val) | KD (val) |", "|---|---|---|---|---|",
            *[f"| {r['seed']} | {100 * r['labels']:.2f} | {100 * r['kd']:.2f} | "
              f"{100 * r.get('labels_val', float('nan')):.2f} | {100 * r.get('kd_val', float('nan')):.2f} |"
              for r in k["seeds"]],
            f"| mean | {100 * k['labels_mean']:.2f} ± {100 * k['labels_std']:.2f} | "
            f"{100 * k['kd_mean']:.2f} ± {100 * k['kd_std']:.2f} | "
            f"{100 * k.get('labels_val_mean', float('nan')):.2f} | {100 * k.get('kd_val_mean', float('nan')):.2f} |",
            *([f"Control, labels + the same mixup: {100 * k['labels_mixup_mean']:.2f} ± "
               f"{100 * k['labels_mixup_std']:.2f}"] if k.get("labels_mixup_mean") is not None else []),
            *([f"Transfer set {k['transfer']} (unlabelled, {k['transfer_ratio']} per labelled sample each step). "
               f"Controls: labels alone for {k['labels_long_epochs']} epochs (the KD run's student compute) "
               f"{100 * k['labels_long_mean']:.2f} ± {100 * k['labels_long_std']:.2f}; the same KD without "
               f"the transfer set {100 * k['kd_no_transfer_mean']:.2f} ± {100 * k['kd_no_transfer_std']:.2f}; "
               f"per seed (labels-long / KD-no-transfer): "
               + ", ".join(f"{100 * r['labels_long']:.1f} / {100 * r['kd_no_transfer']:.1f}" for r in k["seeds"]),
               f"KD gain over the compute-matched labels control: **{k['gain_vs_labels_long_points']:+.2f} points**"]
              if k.get("transfer") else []),
            "", f"KD gain: **{k['gain_points']:+.2f} points**", "",
        ]
    for key, title in (("dpq", "distill-prune-quantize"),):
        if key in res:
            lines += [f"**{title}** recipe", "", "| stage | accuracy | params | non-zero | MACs | size B |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {s['name']} | {100 * s['accuracy']:.2f} | {s['params']} | {s['nonzero_params']} | "
                      f"{s['macs']} | {s['size_bytes']:,} |" for s in res[key]["stages"]]
            lines.append("")
    if "deep" in res:
        d = res["deep"]
        b = d["breakdown"]
        lines += [
            f"**Deep compression** (LeNet-300-100, {d['task']}): dense fp32 {d['dense_fp32_bytes']:,} B -> "
            f".eshare {d['file_bytes']:,} B = **{d['compression']:.1f}x**; accuracy {100 * d['baseline_accuracy']:.2f}"
            f" -> {100 * d['final_accuracy']:.2f} (ONNX Runtime), reloaded from the file "
            f"{100 * d['reloaded_accuracy']:.2f}; drop {d['drop_points']:.2f} points", "",
            "| stage | accuracy | non-zero | size B |", "|---|---|---|---|",
            *[f"| {s['name']} | {100 * s['accuracy']:.2f} | {s['nonzero_params']} | {s['size_bytes']:,} |"
              for s in d["stages"]],
            "", "File breakdown (bytes): " + ", ".join(f"{k.replace('_bytes', '')} {v:,}" for k, v in b.items())
            + f"; {d['bits_per_nonzero_weight']} bits per non-zero weight (index + position)", "",
        ]
    if "lowrank" in res:
        r = res["lowrank"]
        lines += [
            f"**Low-rank** (LeNet-300-100, {r['task']}, target compression {r['compression']} on fc1/fc2): MACs "
            f"{r['macs_before']:,} -> {r['macs_after']:,} (**{r['mac_reduction']:.2f}x**), accuracy "
            f"{100 * r['baseline_accuracy']:.2f} -> {100 * r['accuracy']:.2f} (drop {r['drop_points']:.2f} points), "
            f"ORT p50 {r['latency_ms_p50_before']:.4f} -> {r['latency_ms_p50_after']:.4f} ms", "",
            "| layer | shape | rank | energy kept | MACs before | MACs after |", "|---|---|---|---|---|---|",
            *[f"| {x['layer']} | {x['shape']} | {x.get('rank') or '-'} | "
              f"{'-' if x.get('energy') is None else round(x['energy'], 3)} | {x.get('macs_before') or '-'} | "
              f"{x.get('macs_after') if not x.get('skipped') else 'skipped'} |" for x in r["layers"]],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_distill"))
    ap.add_argument("--parts", default="kd,dpq,deep,lowrank")
    ap.add_argument("--quick", action="store_true", help="few epochs and one seed (smoke test, not the claims)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="teacher/student training epochs (kd)")
    ap.add_argument("--student-epochs", type=int, default=None,
                    help="kd: epochs of both students (labels-only and KD); default --epochs")
    ap.add_argument("--epochs-lenet", type=int, default=40, help="LeNet-300-100 baseline epochs")
    ap.add_argument("--ft-epochs", type=int, default=15)
    ap.add_argument("--kd-task", default="digits")
    ap.add_argument("--kd-model", default="resnet8")
    ap.add_argument("--kd-width", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=8.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--features", default="", help="feature KD pairs 'student:teacher,...' (e.g. layer3:layer3)")
    ap.add_argument("--feature-weight", type=float, default=1.0)
    ap.add_argument("--mixup", type=float, default=None,
                    help="distil on mixup inputs (Beta parameter); adds a labels+mixup control student")
    ap.add_argument("--transfer", default=None,
                    help="kd: unlabelled transfer set (file or generate:N); adds compute-matched controls")
    ap.add_argument("--deep-task", default="digits")
    ap.add_argument("--lowrank-compression", default="3.0")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.epochs_lenet, args.ft_epochs, args.student_epochs = 1, 3, 5, 2, None
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    parts = {"kd": part_kd, "dpq": part_dpq, "deep": part_deep, "lowrank": part_lowrank}
    for p in args.parts.split(","):
        print(f"== {p}", flush=True)
        res[p] = parts[p](args, args.out)
        (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    res["seconds"] = time.time() - t0
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    text = summary(res)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
