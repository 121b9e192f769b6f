"""results.json, report.md and the Rich results table.

`results.json` is a contract: `stages` (baseline first), each with at least name, accuracy (fraction
0-1 on the test split), params, nonzero_params, macs, size_bytes (the file as stored),
latency_ms_p50 and onnx (path relative to the run folder). Other fields may be added, never removed.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeslim.fsutil import write_json, write_text


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_duration(seconds: float) -> str:
    """'3.2 years', '41.6 days', '17.3 h', '12 min'."""
    days = seconds / 86400
    if days >= 365:
        return f"{days / 365:.3g} years"
    if days >= 2:
        return f"{days:.3g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min"


def human_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


COLUMNS = [
    ("stage", lambda s: s["name"]),
    ("accuracy", lambda s: "-" if s.get("accuracy") is None else f"{100 * s['accuracy']:.2f}%"),
    ("params", lambda s: human_count(s.get("params"))),
    ("non-zero", lambda s: human_count(s.get("nonzero_params"))),
    ("MACs", lambda s: human_count(s.get("macs"))),
    ("size", lambda s: human_bytes(s.get("size_bytes"))),
    ("latency p50", lambda s: f"{stage_latency(s):.3f} ms" if stage_latency(s) is not None else "-"),
]


def stage_latency(s: dict) -> float | None:
    """The stage's p50 (ms): timed together with the other stages (interleaved) when the run did, else alone."""
    return s.get("latency_ms_p50_interleaved", s.get("latency_ms_p50"))


def extra_columns(stages: list[dict]) -> list:
    cols = []
    if any("speedup_vs_baseline" in s for s in stages):  # a run: all stages timed together, interleaved
        cols.append(("speed-up", lambda s: f"{s['speedup_vs_baseline']:.2f}x" if s.get("speedup_vs_baseline")
                     else "-"))
    if any("cosine" in s for s in stages):  # text encoders (edgeslim.nlp): fidelity to the original, seq-32 latency
        cols.append(("cosine", lambda s: f"{s['cosine']:.4f}" if s.get("cosine") is not None else "-"))
        cols.append(("NN agree", lambda s: f"{100 * s['nn_agreement']:.1f}%" if s.get("nn_agreement") is not None
                     else "-"))
        cols.append(("para R@1", lambda s: f"{100 * s['paraphrase_recall']:.1f}%"
                     if s.get("paraphrase_recall") is not None else "-"))
        cols.append(("p50 @seq32", lambda s: f"{s['latency_ms_p50_seq32']:.3f} ms"
                     if s.get("latency_ms_p50_seq32") is not None else "-"))
    if any("arena_bytes" in s for s in stages):
        cols.append(("arena", lambda s: human_bytes(s.get("arena_bytes"))))
    if any("energy_mj" in s for s in stages):
        cols.append(
            ("energy/inf", lambda s: f"{s['energy_mj']:.3g} mJ {_method_tag(s.get('energy_method', ''))}"
             if s.get("energy_mj") is not None else "-")
        )
    if any("tflite_size_bytes" in s for s in stages):  # the `tflite` stage (edgeslim.litert)
        cols.append(("tflite acc/size/TFLM arena", lambda s: "-" if "tflite_size_bytes" not in s else
                     ("-" if s.get("tflite_accuracy") is None else f"{100 * s['tflite_accuracy']:.2f}%")
                     + f" / {human_bytes(s['tflite_size_bytes'])} / "
                     f"{human_bytes(s.get('tflm_arena_bytes'))}"
                     + (f" (plain {human_bytes(s['tflm_arena_plain_bytes'])})"  # tflite: {min_arena: true}
                        if s.get("tflm_arena_plain_bytes") else "")))
    return cols


def _method_tag(method: str) -> str:
    """Short label in the table; the caption spells out every method in full."""
    return "(est)" if method.startswith("estimated") else "(meas)" if method.startswith("measured") else "(?)"


def methods_caption(stages: list[dict]) -> str:
    methods = sorted({s["energy_method"] for s in stages if s.get("energy_method")})
    return ("energy: " + "; ".join(methods)) if methods else ""


def _flagged(stages: list[dict]) -> list[dict]:
    """Stages with "(slower)" after the name when slower than the stage before (measured p50, or the
    pass's own interleaved verdict `notes.slower_than_fp32`): said in the table itself, not only below."""
    slow = {name for name, _, _ in slower_stages(stages)}
    slow |= {s["name"] for s in stages if (s.get("notes") or {}).get("slower_than_fp32")}
    return [{**s, "name": s["name"] + " (slower)"} if s["name"] in slow else s for s in stages]


def results_table(stages: list[dict], title: str = "edgeslim results") -> Table:
    t = Table(title=title, caption=methods_caption(stages) or None)
    cols = COLUMNS + extra_columns(stages)
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "stage" else "right", no_wrap=True)
    for s in _flagged(stages):
        t.add_row(*[fn(s) for _, fn in cols])
    return t


def print_table(stages: list[dict], title: str = "edgeslim results", console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(stages, title))
    for name, now, before in slower_stages(stages):
        console.print(f"note: {name} is slower than the stage before it on this machine "
                      f"({now:.4f} vs {before:.4f} ms p50): its kernels do not pay off here for this model")


def markdown_table(stages: list[dict]) -> str:
    cols = COLUMNS + extra_columns(stages)
    lines = ["| " + " | ".join(n for n, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fn(s) for _, fn in cols) + " |" for s in _flagged(stages)]
    caption = methods_caption(stages)
    return "\n".join(lines + ([f"\n{caption}"] if caption else []))


def write_results(out: Path, results: dict) -> None:
    """results.json (with the run's peak RSS so far, `peak_rss_bytes`: {self, children}) and report.md."""
    from edgeslim.resources import peak_rss

    results["peak_rss_bytes"] = peak_rss()
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_md(results))


def report_md(results: dict) -> str:
    stages = results["stages"]
    base, last = stages[0], stages[-1]
    task = results.get("task", {})
    lines = [
        "# edgeslim report",
        "",
        f"Model: `{results.get('model', '?')}`  ",
        f"Task: `{task.get('name', '?')}` (input {task.get('input_shape')}, {task.get('num_classes')} classes, "
        f"{task.get('test')} test samples)  ",
        f"Recipe: `{results.get('recipe', '?')}`",
        "",
        "All figures were measured in this run: accuracy on the test split and latency (single sample, "
        "ONNX Runtime CPU, 1 thread) from each stage's exported ONNX model; size is the stored file. "
        + ("The latencies and speed-ups were timed with all stages together, interleaved in one loop at the end "
           "of the run (each stage's figure timed alone when it finished is kept as `latency_ms_p50_alone`)."
           if any("latency_timing" in s for s in stages) else "Latency: each stage timed when it finished.")
        + " Energy is labelled with its method (estimated or measured).",
        *([f"Device figures (arena, flash, fit, energy) are for `{results['device']}`."] if results.get("device")
          else []),
        "",
        markdown_table(stages),
        "",
    ]
    if len(stages) > 1 and base.get("size_bytes") and last.get("size_bytes"):
        ratio = base["size_bytes"] / last["size_bytes"]
        lat0, lat1 = stage_latency(base), stage_latency(last)
        speed = last.get("speedup_vs_baseline") or (lat0 / lat1 if lat0 and lat1 else float("nan"))
        drop = 100 * (base["accuracy"] - last["accuracy"]) if base.get("accuracy") is not None else float("nan")
        lines += [
            f"**{last['name']} vs baseline:** {ratio:.2f}x smaller on disk, {speed:.2f}x latency speed-up "
            f"(p50), accuracy change {-drop:+.2f} points.",
            "",
        ]
    slower = slower_stages(stages)
    if slower:
        lines += ["**Slower than the stage before, measured here** (the runtime's kernels for this model do not "
                  "pay off on this machine):", ""]
        lines += [f"- `{name}`: {now:.4f} ms vs {before:.4f} ms p50" for name, now, before in slower]
        lines.append("")
    lines += ["## Stage notes", "", "Lists and tables from each pass are in `results.json` (`notes`).", ""]
    for s in stages:
        notes = s.get("notes") or {}
        if notes:
            lines.append(f"- `{s['name']}`: " + ", ".join(f"{k}={_short(v)}" for k, v in notes.items()))
    return "\n".join(lines) + "\n"


def slower_stages(stages: list[dict], margin: float = 1.1) -> list[tuple[str, float, float]]:
    """Stages whose p50 latency is more than `margin` times the previous stage's."""
    out = []
    for prev, cur in zip(stages, stages[1:]):
        a, b = stage_latency(prev), stage_latency(cur)
        if a and b and b > margin * a:
            out.append((cur["name"], b, a))
    return out


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return f"[{len(v)} {'entries' if isinstance(v, list) else 'keys'}]"
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return f"{v.item():.4g}" if isinstance(v.item(), float) else str(v.item())
    except ImportError:  # pragma: no cover
        pass
    return str(v)
