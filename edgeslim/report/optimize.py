"""Rich tables for `edgeslim optimize`: what was tried and why, then original vs optimised side by side."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ops(ops: dict[str, int], top: int = 8) -> str:
    items = list(ops.items())
    s = ", ".join(f"{k} {v}" for k, v in items[:top])
    return s + (f", +{len(items) - top} more types" if len(items) > top else "") + f" (total {sum(ops.values())})"


def print_candidates(res: dict, console: Console) -> None:
    sp = res.get("samples")
    feeds = (f"{res['data']} samples: {sp['calibration_count']} calibrate, fidelity on {sp['held_out_count']} held out"
             if sp else f"{res['feeds']} {res['data']} feeds")
    t = Table(title=f"candidates ({feeds}; latency measured now, interleaved, {res['threads']} thread(s))")
    for c in ("candidate", "KiB", "p50 ms", "p90 ms", "max err", "cosine", "top-1", "status"):
        t.add_column(c, no_wrap=c in ("candidate", "status"))
    o = res["original"]
    t.add_row("original", _f(o["size_bytes"] / 1024, ",.1f"), _f(o["latency_ms_p50"], ".3f"),
              _f(o["latency_ms_p90"], ".3f"), "0", "1", "-", "reference")
    for c in res["candidates"]:
        kib = c["size_bytes"] / 1024 if c["size_bytes"] else None
        t.add_row(c["name"], _f(kib, ",.1f"), _f(c["latency_ms_p50"], ".3f"), _f(c["latency_ms_p90"], ".3f"),
                  _f(c.get("max_abs_err"), ".2g"), _f(c.get("cosine"), ".5f"),
                  _f(c.get("top1_agreement"), ".3f"), c["status"].split(":")[0],
                  style="bold green" if c["status"] == "chosen" else None)
    console.print(t)
    if sp:
        console.print(f"  samples: {sp['note']}", highlight=False)
    for c in res["candidates"]:
        why = c["status"].partition(": ")[2] or c.get("why", "")
        err = f"mean abs err {c['mean_abs_err']:.2g}" if c.get("mean_abs_err") is not None else ""
        notes = [] if c["status"].startswith("skipped") else c["notes"]
        if c["name"].startswith("int8-qdq") and c["name"] != "int8-qdq":
            notes = notes[:1]
        elif c["name"] == "int8-qdq":
            notes = notes[:1]  # the plan's own notes are printed below
        extra = "; ".join(([why] if why else []) + notes + ([err] if err else []))
        console.print(f"  {c['name']:9s} {c['about']}" + (f" -- {extra}" if extra else ""), highlight=False)


def print_int8(res: dict, console: Console, top: int = 8) -> None:
    """The INT8 plan: steps taken, which layers stayed float and why, per-layer FP32 vs INT8 kernel time."""
    p = res.get("int8_plan")
    if not p:
        return
    console.print(f"INT8 plan ({p['format']}, {p['int8_layers']} layers INT8, {len(p['float_layers'])} float, "
                  f"cosine {p['cosine']:.5f}):", highlight=False)
    for n in p["notes"]:
        console.print(f"  - {n}", highlight=False)
    fl = p["float_layers"]
    if fl:
        shown = list(fl.items())[:top]
        console.print("  float layers: " + "; ".join(f"{u} ({w})" for u, w in shown)
                      + (f"; +{len(fl) - top} more (results JSON: int8_plan.float_layers)" if len(fl) > top else ""),
                      highlight=False)
    t = p["layer_times_us"]
    if t:
        tab = Table(title="INT8 layers: kernel time per layer, FP32 vs INT8 (profiled, us; INT8 incl. its "
                          "quantize/dequantize edges)")
        for col in ("layer", "FP32 us", "INT8 us", "speed-up"):
            tab.add_column(col)
        rows = sorted(t.items(), key=lambda kv: -(kv[1]["fp32"] - kv[1]["int8"]))
        for u, v in rows[:top] + (rows[-3:] if len(rows) > top + 3 else []):
            tab.add_row(u, f"{v['fp32']:.0f}", f"{v['int8']:.0f}", _f(v["speedup"], ".2f") + "x")
        fp, q8 = sum(v["fp32"] for v in t.values()), sum(v["int8"] for v in t.values())
        tab.add_row(f"all {len(t)} INT8 layers", f"{fp:.0f}", f"{q8:.0f}", f"{fp / q8:.2f}x" if q8 else "-")
        console.print(tab)


def print_fidelity(res: dict, console: Console) -> None:
    c = next((c for c in res["candidates"] if c["status"] == "chosen"), None)
    if not c or not c.get("per_output"):
        return
    console.print("fidelity per output (chosen): " + "; ".join(
        f"{k}: cosine {v['cosine']:.5f}, max abs {v['max_abs_err']:.3g}"
        + (f", top-1 {v['top1_agreement']:.3f}" if "top1_agreement" in v else "") for k, v in c["per_output"].items()),
        highlight=False)


def print_side_by_side(res: dict, console: Console) -> None:
    s = res["side_by_side"]
    a, b = s["original"], s["optimised"]
    t = Table(title=f"original vs optimised ({b['candidate']})")
    for c in ("", "original", "optimised"):
        t.add_column(c)
    t.add_row("size on disk", _kb(a["size_bytes"]), _kb(b["size_bytes"]) + (
        f"  ({a['size_bytes'] / b['size_bytes']:.2f}x smaller)" if b["size_bytes"] else ""))
    la, lb = a["latency"], b["latency"]
    t.add_row("latency p50 / p90 (ms, measured)", f"{la['latency_ms_p50']:.3f} / {la['latency_ms_p90']:.3f}",
              f"{lb['latency_ms_p50']:.3f} / {lb['latency_ms_p90']:.3f}")
    t.add_row("arena (estimated, planner)", _kb(a["arena_bytes"]), _kb(b["arena_bytes"]))
    ea, eb = a["energy"], b["energy"]
    t.add_row(f"energy/inference on {res['device']}", "-" if not ea else f"{ea['mj']:.4g} mJ ({ea['method']})",
              "-" if not eb else f"{eb['mj']:.4g} mJ ({eb['method']})")
    t.add_row("operators", _ops(a["ops"]), _ops(b["ops"]))
    console.print(t)


def print_report(res: dict, console: Console) -> None:
    for w in res["warnings"]:
        console.print(f"[bold yellow]WARNING:[/bold yellow] {w}", highlight=False)
    for n in res["notes"]:
        console.print(f"repair: {n}", highlight=False)
    print_candidates(res, console)
    print_int8(res, console)
    print_side_by_side(res, console)
    print_fidelity(res, console)
    console.print(f"chosen: {res['reason']}", highlight=False)
    console.print(f"wrote {res['output']}", highlight=False)
