"""The closing table of `edgeslim demo` and the examples: what each stage measured (accuracy, size,
latency timed together with the other stages) beside the device verdict (fits, flash, arena, energy and
battery life, estimated), then one line per slower stage and where the report is."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeslim.report.results import _slower_stages
from edgeslim.report.run_html import headline, stage_table


def summary_table(stages: list[dict], title: str) -> Table:
    head, rows = stage_table(stages)
    dev = next((s["device_verdict"]["device"] for s in stages if s.get("device_verdict")), None)
    caption = "measured here: accuracy, size, latency (ONNX Runtime, batch 1, 1 thread, stages interleaved)"
    if dev:
        caption += f"; estimated for {dev}: fits, flash, arena, energy, battery life"
    t = Table(title=title, caption=caption)
    for h in head:
        t.add_column(h, justify="left" if h == "stage" else "right", no_wrap=True)
    for r in rows:
        t.add_row(*[("[green]yes[/green]" if c == "yes" else "[red]NO[/red]" if c == "NO" else
                     f"[red]{c}[/red]" if c.endswith("(slower)") else c) for c in r])
    return t


def print_summary(results: dict, run_dir: Path, console: Console, title: str) -> None:
    """The table, the headline, slower stages said plainly, the battery assumption and the report's path."""
    stages = results["stages"]
    console.print(summary_table(stages, title))
    for name, now, before in _slower_stages(stages):
        console.print(f"note: {name} is slower than the stage before it here ({now:.4f} vs {before:.4f} ms p50, "
                      "interleaved): its kernels do not pay off on this machine for this model", highlight=False)
    line = headline(stages)
    if line:
        console.print(line, highlight=False)
    v = stages[-1].get("device_verdict") or {}
    if v.get("battery"):
        b = v["battery"]
        console.print(f"battery (estimated): {b['battery']} at {b['rate']}, {b['rest_mode']} between inferences; "
                      f"energy {v['energy_method']} (edgeslim fit MODEL --battery ... --rate ... for others)",
                      highlight=False)
    console.print(f"report: {run_dir / 'report.html'}  (also report.md, results.json)", highlight=False)
