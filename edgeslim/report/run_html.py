"""A run's report.html (self-contained: inline CSS, plots as PNG data URIs, no scripts, nothing fetched)
and the matching sections of report.md (plots written to RUN/plots/ as PNG files).

It shows the stage table, accuracy against size / latency / energy with the stages as points, the
device verdict per stage (flash, arena, estimated latency, energy and battery life), the energy
breakdown, the per-layer structure (channels kept, zero weights, bits) and what compression changed in
behaviour (per-class accuracy, flipped predictions with examples, calibration).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from edgeslim.fsutil import write_bytes, write_text
from edgeslim.report import behaviour, run_plots
from edgeslim.report.plotting import energy_plot
from edgeslim.report.results import (
    human_bytes,
    human_count,
    human_duration,
    methods_caption,
    slower_stages,
    stage_latency,
)

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}"
         "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
         "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
         ".figs{display:flex;flex-wrap:wrap;gap:6px}figure{margin:4px}figcaption{font-size:12px;color:#555}"
         ".ok{color:#1e7e34;font-weight:600}.bad{color:#b02a37;font-weight:600}.note{color:#555;font-size:13px}"
         "pre{font-size:12px;background:#f7f7f7;padding:6px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f} ms" if v < 0.1 else f"{v:.3f} ms"


def stage_table(stages: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Head and rows of the headline table: measured figures, then the device verdict (estimated)."""
    base = stages[0]
    dev = next((s["device_verdict"]["device"] for s in stages if s.get("device_verdict")), None)
    head = ["stage", "accuracy", "vs base", "params", "MACs", "size", "smaller", "latency p50", "speed-up"]
    if dev:
        head += [f"{dev}: fits", "flash", "arena", "latency (est.)", "energy/inf (est.)",
                 "battery (est.)"]  # summary.py splits the table here
    rows = []
    for s in stages:
        acc = s.get("accuracy")
        d = None if acc is None or base.get("accuracy") is None else 100 * (acc - base["accuracy"])
        lat, lat0 = stage_latency(s), stage_latency(base)
        sp = s.get("speedup_interleaved") or (lat0 / lat if lat and lat0 else None)
        r = [s["name"], "-" if acc is None else f"{100 * acc:.2f}%", "-" if d is None else f"{d:+.2f} pts",
             human_count(s.get("params")), human_count(s.get("macs")), human_bytes(s.get("size_bytes")),
             f"{base['size_bytes'] / s['size_bytes']:.1f}x" if s.get("size_bytes") else "-", _ms(lat),
             "-" if sp is None else f"{sp:.2f}x" + (" (slower)" if sp < 1 / 1.1 else "")]
        v = s.get("device_verdict")
        if dev:
            if v:
                b = v.get("battery")
                r += ["yes" if v["fits"] else "NO", human_bytes(v["flash_bytes"]), human_bytes(v["arena_bytes"]),
                      _ms(v.get("latency_ms")), f"{v['energy_mj']:.3g} mJ", _days(b)]
            else:
                r += ["-"] * 6
        rows.append(r)
    return head, rows


def headline(stages: list[dict]) -> str:
    base, last = stages[0], stages[-1]
    if len(stages) < 2 or not last.get("size_bytes"):
        return ""
    lat, lat0 = stage_latency(last), stage_latency(base)
    sp = last.get("speedup_interleaved") or (lat0 / lat if lat and lat0 else float("nan"))
    d = 100 * (last["accuracy"] - base["accuracy"]) if last.get("accuracy") is not None else float("nan")
    txt = (f"{last['name']} vs baseline: {base['size_bytes'] / last['size_bytes']:.1f}x smaller on disk, "
           f"{sp:.2f}x the speed ({'faster' if sp > 1 else 'slower'}; ONNX Runtime, batch 1, all stages timed "
           f"together, interleaved), accuracy {d:+.2f} points.")
    v0, v1 = base.get("device_verdict"), last.get("device_verdict")
    tfl = last.get("tflite_size_bytes") or (last.get("notes") or {}).get("tflite_size_bytes")
    if tfl:  # the file that ships is the .tflite: its size, and (below) its device verdict
        txt += f" The {last['name']} stage ships a {human_bytes(tfl)} .tflite ({base['size_bytes'] / tfl:.1f}x smaller)."
    if v0 and v1:
        txt += (f" On {v1['device']} (estimated{', the .tflite' if v1.get('of', '').endswith('.tflite') else ''}): {v0['energy_mj']:.3g} -> {v1['energy_mj']:.3g} mJ per inference, "
                f"{'fits' if v1['fits'] else 'does NOT fit'} (flash {human_bytes(v1['flash_bytes'])} of "
                f"{human_bytes(v1['flash_available'])}, RAM {human_bytes(v1['ram_bytes'])} of "
                f"{human_bytes(v1['ram_available'])}).")
    return txt


def verdict_table(stages: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["stage", "fits", "flash needed / available", "RAM needed / available (arena + runtime)",
            "latency (est.)", "energy (est.): dynamic + static", "battery life (est.)"]
    rows = []
    for s in stages:
        v = s.get("device_verdict")
        if not v:
            continue
        b = v.get("battery")
        rows.append([s["name"], "yes" if v["fits"] else "NO: " + "; ".join(v.get("reasons") or []),
                     f"{human_bytes(v['flash_bytes'])} / {human_bytes(v['flash_available'])}",
                     f"{human_bytes(v['ram_bytes'])} / {human_bytes(v['ram_available'])}", _ms(v.get("latency_ms")),
                     f"{v['energy_mj']:.3g} mJ = {1e3 * v['dynamic_mj']:.3g} uJ + {v['static_mj']:.3g} mJ",
                     f"{_days(b)} ({b['battery']} at {b['rate']}, {b['rest_mode']} between)" if b
                     else v.get("battery_note", "-")])
    return head, rows


def run_figures(results: dict, run_dir: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (PNG, caption)."""
    stages = results["stages"]
    figs: dict[str, tuple[bytes, str]] = {}
    figs["acc_size"] = (run_plots.tradeoff_plot(stages, lambda s: s.get("size_bytes") and s["size_bytes"] / 1024,
                                                "model file (KB, measured)"), "accuracy vs size")
    figs["acc_latency"] = (run_plots.tradeoff_plot(stages, stage_latency, "latency p50 (ms, ONNX Runtime, measured)"),
                           "accuracy vs latency")
    ver = [s for s in stages if s.get("device_verdict")]
    if ver:
        dev = ver[0]["device_verdict"]["device"]
        figs["acc_energy"] = (run_plots.tradeoff_plot(
            stages, lambda s: s.get("device_verdict") and s["device_verdict"]["energy_mj"],
            f"energy per inference on {dev} (mJ, estimated)"), "accuracy vs energy")
        figs["energy_stages"] = (run_plots.energy_stages_plot(stages), "energy per inference by stage")
        last = ver[-1]["device_verdict"]["energy_layers"]
        if last:
            rows = [{"layer": r["layer"].split("/")[-2] if "/" in r["layer"] else r["layer"],
                     "compute_mj": r["compute_uj"] * 1e-3, "memory_mj": r["memory_uj"] * 1e-3,
                     "static_mj": r["static_uj"] * 1e-3} for r in last if r["macs"]]
            figs["energy_layers"] = (energy_plot(rows[:40]), f"energy by layer of {ver[-1]['name']} (estimated)")
    for i, s in enumerate(stages[1:], 1):
        if s.get("layers"):
            figs[f"layers_{i:02d}"] = (run_plots.stage_layers_plot(s["layers"][:60]),
                                       f"{s['name']}: channels kept, zero weights, bits per layer")
    if any(s.get("per_class_accuracy_delta") for s in stages[1:]):
        figs["per_class"] = (run_plots.per_class_plot(stages), "per-class accuracy change vs baseline")
    inputs = behaviour.load_flipped_inputs(run_dir)
    for i, s in enumerate(stages[1:], 1):
        if s.get("flipped_examples") and inputs:
            figs[f"flipped_{i:02d}"] = (run_plots.flipped_plot(s["flipped_examples"], inputs, s["name"]),
                                        f"{s['name']}: test samples whose prediction flipped")
    return figs


def md_sections(results: dict, figs: dict[str, tuple[bytes, str]] | None = None) -> list[str]:
    """The report.md sections beyond the stage table: verdict, behaviour, plots (as files)."""
    stages = results["stages"]
    out: list[str] = []
    head, rows = verdict_table(stages)
    if rows:
        dev = stages[0]["device_verdict"]["device"]
        out += [f"## Device verdict: {dev} (estimated from the profile)", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    beh = behaviour.summary_lines(stages)
    if beh:
        out += ["## What compression changed in behaviour (test split, vs the baseline)", "",
                "ECE: expected calibration error, 15 equal-width bins of the top softmax probability: "
                "sum over bins of (bin share) x |accuracy - mean confidence|.", ""] + beh + [""]
    if figs:
        out += ["## Plots", ""] + [f"![{cap}](plots/{name}.png)" for name, (_, cap) in figs.items()] + [""]
    return out


def write_run_html(run_dir: Path, results: dict) -> None:
    """Write RUN/report.html, RUN/plots/*.png and append the sections to RUN/report.md."""
    from edgeslim.report.results import report_md

    figs = run_figures(results, run_dir)
    for name, (png, _) in figs.items():
        write_bytes(run_dir / "plots" / f"{name}.png", png)
    write_text(run_dir / "report.md", report_md(results) + "\n" + "\n".join(md_sections(results, figs)))
    rec = run_dir / "recipe.yaml"
    write_text(run_dir / "report.html", page(results, figs, rec.read_text() if rec.is_file() else ""))


def page(results: dict, figs: dict[str, tuple[bytes, str]], recipe_text: str = "") -> str:
    e = html.escape
    stages = results["stages"]
    task = results.get("task", {})

    def img(name: str) -> str:
        if name not in figs:
            return ""
        png, cap = figs[name]
        return (f'<figure><img alt="{e(cap)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                f"<figcaption>{e(cap)}</figcaption></figure>")

    def table(head: list[str], rows: list[list[str]]) -> str:
        t = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
        for r in rows:
            t += "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>"
        return t + "</table>"

    head, rows = stage_table(stages)
    body = [
        "<h1>edgeslim run report</h1>",
        f"<p>Model <code>{e(str(results.get('model', '?')))}</code>, task <code>{e(str(task.get('name', '?')))}"
        f"</code> (input {e(str(task.get('input_shape')))}, {task.get('num_classes')} classes, {task.get('test')} "
        "test samples).</p>",
        "<p class=note>Measured in this run: accuracy (each stage's ONNX model in ONNX Runtime on the test split), "
        "size (the stored file), latency (ONNX Runtime, batch 1, 1 thread; all stages timed together, interleaved, "
        "at the end of the run). Estimated from the device profile and labelled so: device latency, energy, "
        f"battery life. {e(methods_caption(stages))}</p>",
        f"<p><b>{e(headline(stages))}</b></p>", table(head, rows),
    ]
    slower = slower_stages(stages)
    for name, now, before in slower:
        body.append(f"<p class=bad>{e(name)} is slower than the stage before it here ({now:.4f} vs {before:.4f} "
                    "ms p50): its kernels do not pay off on this machine for this model.</p>")
    body += ["<h2>Trade-offs (stages as points)</h2>", '<div class="figs">', img("acc_size"), img("acc_latency"),
             img("acc_energy"), "</div>"]
    vh, vr = verdict_table(stages)
    if vr:
        body += [f"<h2>Device verdict: {e(stages[0]['device_verdict']['device'])} (estimated)</h2>", table(vh, vr),
                 "<p class=note>Energy on a microcontroller is mostly active power x run time (static); the "
                 "dynamic part is the operations and bytes moved (Horowitz 45 nm figures scaled per device). "
                 "Battery life: average power = rate x energy per inference + sleep power x idle fraction; "
                 "ignores self-discharge, regulator losses, sensors and radio.</p>",
                 '<div class="figs">', img("energy_stages"), img("energy_layers"), "</div>"]
    lay = [n for n in figs if n.startswith("layers_")]
    if lay:
        body += ["<h2>Per-layer structure: channels kept, zero weights, weight bits</h2>", '<div class="figs">']
        body += [img(n) for n in lay] + ["</div>"]
    beh = behaviour.summary_lines(stages)
    if beh:
        body += ["<h2>What compression changed in behaviour (test split, vs the baseline)</h2>",
                 "<p class=note>Flipped: test samples whose predicted class differs from the baseline's. ECE "
                 "(expected calibration error): 15 equal-width bins of the top softmax probability; sum over bins "
                 "of (share of samples in the bin) x |accuracy - mean confidence| in the bin; 0 = calibrated.</p>",
                 f"<p>{e(beh[0])}</p>", md_table_to_html(beh[2:]), img("per_class"), '<div class="figs">']
        body += [img(n) for n in figs if n.startswith("flipped_")] + ["</div>"]
    notes = [f"<li><code>{e(s['name'])}</code>: " + e(", ".join(f"{k}={_short(v)}" for k, v in s["notes"].items()))
             + "</li>" for s in stages if s.get("notes")]
    if notes:
        body += ["<h2>Stage notes</h2>", "<ul>", *notes, "</ul>"]
    body += [f"<h2>Recipe</h2><p><code>{e(str(results.get('recipe', '')))}</code></p><pre>{e(recipe_text)}</pre>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgeslim run report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def _days(b: dict | None) -> str:
    return "-" if not b else human_duration(b["lifetime_days"] * 86400)


def _cell(c: str) -> str:
    e = html.escape(c)
    if c in ("yes",) or c.startswith("yes "):
        return f"<span class=ok>{e}</span>"
    if c.startswith("NO") or c.endswith("(slower)"):
        return f"<span class=bad>{e}</span>"
    return e


def md_table_to_html(lines: list[str]) -> str:
    """A markdown table (its `|` lines) as an HTML table; separator rows dropped."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= {"-"} for c in r)]
    if not rows:
        return ""
    t = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in rows[0]) + "</tr>"
    for r in rows[1:]:
        t += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    return t + "</table>"


def _short(v: object) -> str:
    from edgeslim.report.results import _short as short

    return short(v)
