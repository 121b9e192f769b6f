"""The closing table of `edgeslim demo` and the examples: what each stage measured (accuracy, size,
latency timed together with the other stages) beside the device verdict (fits, flash, arena, energy and
battery life, estimated), then one line per slower stage and where the report is."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeslim.report.results import slower_stages
from edgeslim.report.run_html import headline, stage_table


def _colour(c: str) -> str:
    return ("[green]yes[/green]" if c == "yes" else "[red]NO[/red]" if c == "NO" else
            f"[red]{c}[/red]" if c.endswith("(slower)") else c)


def summary_tables(stages: list[dict], title: str) -> list[Table]:
    """Two compact tables: what was measured here, and the device verdict (estimated)."""
    head, rows = stage_table(stages)
    split = head.index("speed-up") + 1
    keep = [0, 1, 2, 4, 5, 6, 7, 8]  # stage, accuracy, vs base, MACs, size, smaller, latency, speed-up
    t = Table(title=title, caption="measured here: accuracy on the test split; size of the stored file; latency "
              "p50 in ONNX Runtime (batch 1, 1 thread), all stages timed together, interleaved")
    for i in keep:
        t.add_column(head[i], justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        t.add_row(*[_colour(r[i]) for i in keep])
    out = [t]
    if len(head) > split:
        dev = head[split].split(":")[0]
        cols = ["stage", "fits", "flash", "arena", "latency", "energy/inference", "battery life"]
        vrows = [[r[0], *r[split:]] for r in rows]
        battery = any(r[-1] != "-" for r in vrows)
        if not battery:  # no battery in the profile (a mains-powered board): no column
            cols, vrows = cols[:-1], [r[:-1] for r in vrows]
        from edgeslim.devices import load_device

        try:
            calibrated = load_device(dev).calibration is not None  # the profile's own record, not its name
        except Exception:  # a user profile that is gone: say nothing about it
            calibrated = False
        prec = sorted({m.split("uncalibrated precision: ")[1].split(")")[0] for s in stages
                       for m in [str((s.get("device_verdict") or {}).get("energy_method", ""))]
                       if "uncalibrated precision: " in m})
        what = "calibrated" if calibrated else "uncalibrated"
        if prec:
            what += f" profile; {', '.join(prec)} MACs at an uncalibrated precision"
        else:
            what += " profile"
        v = Table(title=f"{dev} verdict (estimated from the {what})",
                  caption="fits: weights + runtime in flash, arena + runtime in RAM"
                  + ("; battery life at 1 inference/s on the profile's battery, sleeping in between" if battery else ""))
        for i, h in enumerate(cols):
            v.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for r in vrows:
            v.add_row(*[_colour(c) for c in r])
        out.append(v)
    return out


def print_summary(results: dict, run_dir: Path, console: Console, title: str) -> None:
    """The table, the headline, slower stages said plainly, the battery assumption and the report's path."""
    stages = results["stages"]
    for t in summary_tables(stages, title):
        console.print(t)
    for name, now, before in slower_stages(stages):
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
