"""results.json, report.md and report.html of a text-encoder run.

`results.json` keeps the run contract (`stages`, each with name, accuracy (null: an encoder has none),
params, nonzero_params, macs, size_bytes, latency_ms_p50, onnx) and adds per stage `cosine`,
`nn_agreement`, `paraphrase_recall`, `latency_ms_p50_seq32`, `speedup_vs_baseline` and the timing
conditions. report.html is self-contained (inline CSS, plots as PNG data URIs): the same tables as
report.md and cosine against latency and size, the stages as points.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from edgeslim.fsutil import write_json, write_text
from edgeslim.report.results import human_bytes, markdown_table


def write_text_results(out: Path, results: dict) -> None:
    write_json(out / "results.json", results)
    md = text_report_md(results)
    write_text(out / "report.md", md)
    rec = out / "recipe.yaml"
    write_text(out / "report.html", report_html(results, md, rec.read_text() if rec.is_file() else ""))


def _cosine_plot(stages: list[dict], get: Callable[[dict], float | None], label: str) -> bytes:
    """Cosine to the original (y) against one cost (x), one labelled point per stage, in recipe order."""
    from edgeslim.report.plotting import plt, png
    from edgeslim.report.run_plots import COLORS

    pts = [(float(x), float(s["cosine"]), s["name"]) for s in stages
           if s.get("cosine") is not None and (x := get(s)) is not None]
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", c="#bbbbbb", zorder=1)
        for i, (x, y, n) in enumerate(pts):
            ax.scatter([x], [y], s=60 if i == 0 else 40, marker="*" if i == 0 else "o", c=COLORS[i % len(COLORS)],
                       zorder=2, label=n)
        ax.legend(fontsize=7)
    ax.set_xlabel(label)
    ax.set_ylabel("cosine to the original")
    ax.grid(alpha=0.3)
    return png(fig)


def report_html(results: dict, md: str, recipe_text: str = "") -> str:
    """report.md's tables and notes as one self-contained page, plus two trade-off plots (measured figures)."""
    from edgeslim.report.run_html import STYLE, md_table_to_html

    e = html.escape
    stages = results["stages"]
    body = ["<h1>edgeslim run report (text encoder)</h1>"]
    table: list[str] = []
    for line in md.splitlines()[1:]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            body.append(md_table_to_html(table))
            table = []
        if line.startswith("## "):
            body.append(f"<h2>{e(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p class=note>{e(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{e(line.strip().replace('**', '').replace('`', ''))}</p>")
    if table:
        body.append(md_table_to_html(table))
    figs = [(_cosine_plot(stages, lambda s: s.get("latency_ms_p50"), "latency p50 at seq 128 (ms, ONNX Runtime)"),
             "cosine vs latency"),
            (_cosine_plot(stages, lambda s: s.get("size_bytes") and s["size_bytes"] / 2**20, "ONNX file (MiB)"),
             "cosine vs size")]
    body += ["<h2>Trade-offs (stages as points, measured)</h2>", '<div class="figs">']
    body += [f'<figure><img alt="{cap}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
             f"<figcaption>{cap}</figcaption></figure>" for png, cap in figs] + ["</div>"]
    body += [f"<h2>Recipe</h2><p><code>{e(str(results.get('recipe', '')))}</code></p><pre>{e(recipe_text)}</pre>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgeslim run report (text encoder)</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


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


def text_report_md(results: dict) -> str:
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
