"""The search report: report.html (self-contained: plots embedded as PNG data URIs, no scripts or
fonts fetched) and report.md (same tables; plots written beside it as PNG files)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from edgeslim.fsutil import write_bytes, write_text
from edgeslim.report import search_plots
from edgeslim.report.plotting import energy_plot
from edgeslim.report.results import human_bytes

FRONT_PLOTS = (("energy", "energy_mj", "energy per inference (mJ, estimated)"),
               ("latency", "latency_ms", "device latency (ms, estimated)"),
               ("size", "flash_bytes", "model file (KB, measured)"))


def _row(name: str, m: dict, fits: str, val: dict | None = None) -> list[str]:
    ort = m.get("ort_latency_ms_p50")
    va = "-" if not val or val.get("accuracy") is None else f"{100 * val['accuracy']:.2f}%"
    return [name, va, f"{100 * m['accuracy']:.2f}%", human_bytes(m["flash_bytes"]), human_bytes(m["arena_bytes"]),
            f"{m['latency_ms']:.3g} ms", "-" if ort is None else f"{ort:.3f} ms", f"{m['energy_mj']:.3g} mJ",
            f"{m['macs']:,}", fits]


HEAD = ["model", "accuracy (val: picks)", "accuracy (test: reported)", "flash (file)", "arena", "device latency (est.)", "ORT p50 (host, measured)",
        "energy (est.)", "MACs", "fits budget"]


def _chosen(summary: dict) -> dict | None:
    feas = [f for f in summary["front"] if f["feasible"]]
    pool = feas or summary["front"]
    # picked on validation (older search.json files have only the test figures)
    return max(pool, key=lambda f: f.get("val_metrics", f["metrics"])["accuracy"]) if pool else None


def search_figures(summary: dict) -> dict[str, bytes]:
    figs = {}
    method = next((f["metrics"].get("energy_method") for f in summary["front"] if f["metrics"].get("energy_method")),
                  summary["baseline"]["test"].get("energy_method"))
    for name, key, label in FRONT_PLOTS:
        if key == "energy_mj" and method:  # the estimate's label on the axis
            label = f"energy per inference (mJ, {method})"
        figs[f"front_{name}"] = search_plots.front_plot(summary, key, label, 1 / 1024 if key == "flash_bytes" else 1.0)
    chosen = _chosen(summary)
    if chosen is not None:
        figs["layers"] = search_plots.candidate_layers_plot(chosen["layers"])
        figs["energy_layers"] = energy_plot(chosen["metrics"]["energy_layers"])
    return figs


def _budget_lines(summary: dict) -> list[str]:
    b = summary["budget"]
    parts = []
    if b.get("max_flash") is not None:
        parts.append(f"flash <= {human_bytes(b['max_flash'])}")
    if b.get("max_ram") is not None:
        parts.append(f"arena <= {human_bytes(b['max_ram'])}")
    if b.get("max_latency") is not None:
        parts.append(f"latency <= {b['max_latency']:g} ms")
    if b.get("max_energy") is not None:
        parts.append(f"energy <= {b['max_energy']:g} mJ")
    if b.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop <= {b['max_accuracy_drop']:g} points")
    return parts


def _table_rows(summary: dict) -> list[tuple[list[str], str | None]]:
    rows: list[tuple[list[str], str | None]] = [(_row("baseline", summary["baseline"]["test"], "-",
                                                                summary["baseline"].get("val")), None)]
    for f in summary["front"]:
        bad = ", ".join(k for k, v in f["violations"].items() if v > 0)
        rows.append((_row(f"trial {f['trial']}", f["metrics"], "yes" if f["feasible"] else f"no ({bad})",
                          f.get("val_metrics")), f["recipe"]))
    return rows


def write_search_report(out: Path, summary: dict) -> None:
    figs = search_figures(summary)
    cfg = summary["config"]
    c = summary["counts"]
    chosen = _chosen(summary)
    energy_method = (chosen or {}).get("metrics", summary["baseline"]["test"]).get("energy_method", "?")
    intro = (f"Model `{cfg['model']}` on task `{cfg['task']}`, device `{summary['device']}`; "
             f"objectives {', '.join(cfg['objectives'])}; budget: {'; '.join(_budget_lines(summary)) or 'none'}. "
             f"{cfg['trials']} trials: {c['COMPLETE']} proxy-trained, {c['PRUNED']} rejected before training, "
             f"{c['FAIL']} failed; {summary['feasible_trials']} feasible. Proxy: {cfg['proxy_epochs']} fine-tuning "
             f"epochs, accuracy on the validation split. The front was then fine-tuned fully and measured on the "
             f"validation split (which decides `fits budget` and the best recipes) and the test split (reported "
             f"only, never used for a pick). Accuracy, file size and arena (planner) are measured; device latency "
             f"(MACs / profile MAC rate) and energy ({energy_method}) are estimated.")
    best = ", ".join(f"{o}: `{b['file']}` (trial {b['trial']})" for o, b in summary["best"].items()) or \
        "none: no front member met the budget after full fine-tuning"
    rows = _table_rows(summary)
    # --- markdown
    md = ["# edgeslim search report", "", intro, "", f"Best recipes (reproduce with `edgeslim run`): {best}.", "",
          "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    md += ["| " + " | ".join(r) + " |" for r, _ in rows]
    md.append("")
    for name, data in figs.items():
        write_bytes(out / "plots" / f"{name}.png", data)
        md.append(f"![{name}](plots/{name}.png)")
    md.append("")
    for r, recipe in rows:
        if recipe:
            md += [f"### {r[0]}", "```yaml", recipe.rstrip(), "```", ""]
    write_text(out / "report.md", "\n".join(md) + "\n")
    # --- html
    e = html.escape

    def img(name: str, alt: str) -> str:
        if name not in figs:
            return ""
        return (f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}">'
                f"<figcaption>{e(alt)}</figcaption></figure>")

    table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEAD + ["recipe"]) + "</tr>"
    for r, recipe in rows:
        rec = f"<details><summary>YAML</summary><pre>{e(recipe)}</pre></details>" if recipe else ""
        table += "<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + f"<td>{rec}</td></tr>"
    table += "</table>"
    chosen_title = f"trial {chosen['trial']}" if chosen else "-"
    body = [
        "<h1>edgeslim search report</h1>", f"<p>{e(intro)}</p>", f"<p>Best recipes: {e(best)}</p>",
        "<h2>Pareto front</h2>", '<div class="figs">',
        img("front_energy", "accuracy vs energy"), img("front_latency", "accuracy vs latency"),
        img("front_size", "accuracy vs size"), "</div>", "<h2>Front members and baseline</h2>", table,
        f"<h2>Chosen model ({e(chosen_title)}): per-layer structure and bits</h2>",
        img("layers", "per-layer kept channels, sparsity and weight bits"),
        "<h2>Energy by layer (compute vs memory, estimated)</h2>",
        img("energy_layers", "energy breakdown by layer"),
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             ".figs{display:flex;flex-wrap:wrap;gap:8px}figure{margin:4px}pre{font-size:11px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgeslim search</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    write_text(out / "report.html", page)
