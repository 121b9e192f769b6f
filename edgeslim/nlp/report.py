"""results.json and report.md of a text-encoder run.

`results.json` keeps the run contract (`stages`, each with name, accuracy (null: an encoder has none),
params, nonzero_params, macs, size_bytes, latency_ms_p50, onnx) and adds per stage `cosine`,
`nn_agreement`, `paraphrase_recall`, `latency_ms_p50_seq32` and the timing conditions.
"""

from __future__ import annotations

from pathlib import Path

from edgeslim.fsutil import write_json, write_text
from edgeslim.report.results import human_bytes, markdown_table


def write_text_results(out: Path, results: dict) -> None:
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_md(results))


def speedups(stages: list[dict]) -> list[tuple[str, float, float | None]]:
    """(stage, speed-up at seq 128, speed-up at seq 32) of every stage against the baseline."""
    base = stages[0]
    out = []
    for s in stages:
        a = base["latency_ms_p50"] / s["latency_ms_p50"] if s.get("latency_ms_p50") else float("nan")
        b = (base["latency_ms_p50_seq32"] / s["latency_ms_p50_seq32"]
             if s.get("latency_ms_p50_seq32") and base.get("latency_ms_p50_seq32") else None)
        out.append((s["name"], a, b))
    return out


def report_md(results: dict) -> str:
    stages = results["stages"]
    task = results.get("task", {})
    base, last = stages[0], stages[-1]
    enc = results.get("encoder", {})
    lines = [
        "# edgeslim report (text encoder)",
        "",
        f"Model: `{results.get('model', '?')}` ({enc.get('model_type', '?')}, {enc.get('pooling', 'mean')} pooling"
        f"{', L2-normalised' if enc.get('normalize', True) else ''})  ",
        f"Task: `{task.get('name', '?')}` ({task.get('test')} evaluation sentences, "
        f"{task.get('paraphrase_groups_in_test')} paraphrase groups among them; {task.get('train')} calibration / "
        "fine-tuning sentences, never used for the figures below)  ",
        f"Recipe: `{results.get('recipe', '?')}`",
        "",
        "All figures were measured in this run. `cosine`: mean cosine similarity of each stage's sentence "
        "embeddings (its ONNX model in ONNX Runtime) to the original PyTorch encoder's; `NN agree`: share of "
        "evaluation sentences whose nearest neighbour is unchanged; `para R@1`: share of paraphrase-group "
        "sentences whose nearest neighbour is their paraphrase. Latency: ONNX Runtime on the CPU, batch 1, "
        f"1 thread, sequence length {base.get('latency_seq_len', 128)} (and 32), all stages timed together in "
        "one interleaved loop; size is the ONNX file. Absolute ms depend on the host; the ratios come from one loop.",
        "",
        markdown_table(stages),
        "",
    ]
    rows = speedups(stages)
    lines += ["| stage | speed-up vs baseline @128 | @32 | size vs baseline |", "|---|---|---|---|"]
    for (name, a, b), s in zip(rows, stages):
        size = base["size_bytes"] / s["size_bytes"] if s.get("size_bytes") else float("nan")
        lines.append(f"| {name} | {a:.2f}x | {'-' if b is None else f'{b:.2f}x'} | {size:.2f}x smaller |")
    lines.append("")
    if len(stages) > 1:
        a = rows[-1][1]
        lines += [
            f"**{last['name']} vs baseline (the original's plain ONNX export):** {a:.2f}x faster at sequence "
            f"length {base.get('latency_seq_len', 128)}, {human_bytes(base['size_bytes'])} -> "
            f"{human_bytes(last['size_bytes'])}, cosine {last['cosine']:.4f}, nearest-neighbour agreement "
            f"{100 * last['nn_agreement']:.1f}%.",
            "",
        ]
    slower = [(s["name"], s["latency_ms_p50"], p["latency_ms_p50"]) for p, s in zip(stages, stages[1:])
              if s.get("latency_ms_p50") and p.get("latency_ms_p50") and s["latency_ms_p50"] > 1.1 * p["latency_ms_p50"]]
    if slower:
        lines += ["**Slower than the stage before, measured here:**", ""]
        lines += [f"- `{n}`: {a:.3f} ms vs {b:.3f} ms p50" for n, a, b in slower]
        lines.append("")
    lines += ["## Stage notes", "", "Full notes (sensitivity scores, distillation losses) are in `results.json`.", ""]
    for s in stages:
        notes = s.get("notes") or {}
        short = {k: v for k, v in notes.items() if not isinstance(v, (dict, list)) or k in ("kept_float", "fused")}
        if short:
            lines.append(f"- `{s['name']}`: " + "; ".join(f"{k}: {_fmt(v)}" for k, v in short.items()))
    return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(str(x.get("node", x)) if isinstance(x, dict) else str(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items())
    return str(v)
