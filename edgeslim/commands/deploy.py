"""`edgeslim fit`, `edgeslim devices`, `edgeslim arena` and the deploy table of `edgeslim measure`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgeslim.cli import _emit_json, app, console
from edgeslim.report.results import human_bytes

BATTERY_HELP = "battery for a lifetime estimate, e.g. 225mAh@3V or 0.675Wh (default: the device profile's)"
RATE_HELP = "inferences per time for the lifetime estimate: 1/s, 10/min, 0.5/s, 1/h (default 1/s)"
BETWEEN_HELP = "power state between inferences: sleep (profile sleep_power_mw, the default where set) or idle"
FLEET_HELP = "also the yearly energy (kWh) and CO2 of this many such devices"
GRID_HELP = "grid carbon intensity for --fleet, g CO2e/kWh (default 475: world average, IEA 2019)"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("[green]fits[/green]" if ok else "[red]does not fit[/red]")


@app.command()
def fit(
    model: Path = typer.Argument(..., help="ONNX file, edgeslim model folder or .tflite file"),
    device: str = typer.Option("cortex-m4", "--device", "-d", help="device profile name or YAML path"),
    arena: int | None = typer.Option(None, help="use this arena size (bytes) instead of the planner's"),
    battery: str | None = typer.Option(None, help=BATTERY_HELP),
    rate: str | None = typer.Option(None, help=RATE_HELP),
    between: str | None = typer.Option(None, help=BETWEEN_HELP),
    fleet: int | None = typer.Option(None, help=FLEET_HELP),
    grid_intensity: float | None = typer.Option(None, help=GRID_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Does MODEL fit DEVICE? Weights vs flash, activation arena vs RAM; estimated latency, energy and battery life."""
    from edgeslim.deploy.fit import fit_check
    from edgeslim.measure import battery as bat

    bat.check_options(battery, rate, between, fleet, grid_intensity)
    r = fit_check(model, device, arena_bytes=arena, arena_source="given" if arena else "planner")
    life = bat.for_row({"name": str(model), "deploy_device": r.device, "energy_mj": r.energy_mj,
                        "energy_latency_ms": r.latency_ms}, device, battery, rate, between, fleet, grid_intensity)
    from edgeslim.litert.fit import arena_beside  # X.onnx beside X.tflite: both arena figures

    beside = arena_beside(model)
    if as_json:
        _emit_json({"model": str(model), **r.as_dict(), **({"arena_beside": beside} if beside else {}),
                    **({"battery": life.as_dict()} if life else {})})
        return
    console.print(f"[bold]{model}[/bold] on [bold]{r.device}[/bold]: {_verdict(r.fits)}")
    console.print(f"  flash: {human_bytes(r.flash_bytes)} needed (weights {human_bytes(r.weights_bytes)} + "
                  f"runtime {human_bytes(r.flash_bytes - r.weights_bytes)}) of {human_bytes(r.flash_available)}"
                  f"  {_verdict(r.fits_flash)}")
    console.print(f"  RAM:   {human_bytes(r.ram_bytes)} needed (arena {human_bytes(r.arena_bytes)} "
                  f"({r.arena_source}) + runtime {human_bytes(r.ram_bytes - r.arena_bytes)}) of "
                  f"{human_bytes(r.ram_available)}  {_verdict(r.fits_ram)}")
    if r.energy_mj is not None and r.latency_ms is not None:
        console.print(f"  latency ~{r.latency_ms:.3g} ms, energy ~{r.energy_mj:.3g} mJ per inference "
                      f"({r.energy_method})")
    if beside:
        console.print(f"  arena: planner {human_bytes(beside['planner_arena_bytes'])} ({Path(beside['onnx']).name}) vs "
                      f"TFLite Micro head {human_bytes(beside['tflm_arena_head_bytes'])} + tail "
                      f"{human_bytes(beside['tflm_arena_tail_bytes'])} ({Path(beside['tflite']).name}): planner "
                      f"{beside['planner_vs_tflm_head_pct']:+.1f}% vs head", highlight=False)
    for line in r.reasons:
        console.print(f"  [red]-[/red] {line}")
    for line in bat.lines(life) if life else []:
        console.print(f"  {line}", highlight=False)


@app.command("devices")
def devices_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the built-in device profiles (pass --device NAME or a YAML path of your own)."""
    from edgeslim.devices import builtin_devices, load_device

    devs = [load_device(n) for n in builtin_devices()]
    if as_json:
        _emit_json([d.model_dump() for d in devs])
        return
    t = Table(title="edgeslim device profiles")
    for c in ("name", "description", "flash", "RAM (arena)", "int8 MAC/s", "fp32 MAC/s", "active power"):
        t.add_column(c)
    for d in devs:
        t.add_row(d.name, d.description, human_bytes(d.flash_bytes), human_bytes(d.sram_bytes),
                  f"{d.macs_per_second('int8') / 1e9:.3g} G", f"{d.macs_per_second('fp32') / 1e9:.3g} G",
                  f"{d.active_power_mw:g} mW")
    console.print(t)


@app.command("arena")
def arena_cmd(
    model: Path = typer.Argument(..., help="ONNX file or edgeslim model folder"),
    no_fuse_qdq: bool = typer.Option(False, help="plan QDQ float tensors as float (no int8 kernel fusion)"),
    align: int = typer.Option(16, help="buffer alignment in bytes (TFLite Micro: 16)"),
    write_reordered: Path | None = typer.Option(None, help="write the model with its nodes in the best order"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Static activation arena plan: buffers, lifetimes, offsets; naive sum vs planned arena."""
    from edgeslim.deploy.fit import to_onnx
    from edgeslim.deploy.memory import plan_arena, reorder_model
    from edgeslim.fsutil import write_bytes

    path, cleanup = to_onnx(model)
    try:
        plan = plan_arena(path, fuse_qdq=not no_fuse_qdq, align=align)
        if write_reordered is not None:
            write_bytes(write_reordered, reorder_model(path)[0].SerializeToString())
    finally:
        if cleanup:
            cleanup()
    if as_json:
        _emit_json(plan.as_dict(buffers=True))
        return
    t = Table(title=f"arena plan of {model}")
    for c in ("buffer", "bytes", "first", "last", "offset"):
        t.add_column(c, justify="left" if c == "buffer" else "right")
    for b in sorted(plan.buffers, key=lambda b: (b.first, b.name)):
        t.add_row(b.name, f"{b.size:,}", str(b.first), str(b.last), f"{b.offset:,}")
    console.print(t)
    console.print(f"arena {human_bytes(plan.arena_bytes)} ({plan.arena_bytes:,} B) vs naive sum "
                  f"{human_bytes(plan.naive_bytes)}; peak live {human_bytes(plan.peak_live_bytes)}; "
                  f"best order found ({plan.reorder_method}): {human_bytes(plan.reordered_arena_bytes)}")
    if plan.unknown_tensors:
        console.print(f"[yellow]warning:[/yellow] {len(plan.unknown_tensors)} tensors have no inferable shape "
                      "and count 0 bytes: the arena is a lower bound")


def _ms(r: dict, key: str) -> str:
    return f"{r[key]:.3f} ms" if r.get(key) is not None else "-"


def deploy_table(rows: list[dict], title: str = "deployment (one column per model)") -> Table:
    """Latency (ORT vs PyTorch), arena, flash, fit, energy and peak RSS; metrics as rows, models as columns."""
    dev = rows[0].get("deploy_device", "?") if rows else "?"
    litert = " (LiteRT for .tflite)" if any(r.get("runtime") == "litert" for r in rows) else ""
    lines: list[tuple[str, object]] = [
        ("ORT latency p50 / p90 / p99" + litert, lambda r: " / ".join(f"{r.get(f'latency_ms_{q}', float('nan')):.3f}"
                                                            for q in ("p50", "p90", "p99")) + " ms"),
        ("PyTorch eager p50", lambda r: _ms(r, "latency_torch_ms_p50")),
        ("ORT vs PyTorch max |diff|", lambda r: f"{r['parity_max_abs_diff']:.2g}" if "parity_max_abs_diff" in r
         else "-"),
    ]
    b = next((r["batch"] for r in rows if "batch" in r), None)
    if b:
        lines += [(f"ORT batch {b} p50", lambda r: _ms(r, f"latency_b{b}_ms_p50")),
                  (f"PyTorch batch {b} p50", lambda r: _ms(r, f"latency_torch_b{b}_ms_p50"))]
    lines += [
        ("activation arena (planner)", lambda r: human_bytes(r.get("arena_bytes"))),
        ("  best operator order", lambda r: human_bytes(r.get("arena_bytes_reordered"))),
        ("  naive sum of activations", lambda r: human_bytes(r.get("naive_activation_bytes"))),
    ]
    if any(r.get("tflm_arena_bytes") for r in rows):  # .tflite models (edgeslim.litert): the runtime's own figure
        lines += [("activation arena (TFLite Micro)", lambda r: "-" if not r.get("tflm_arena_bytes") else
                   f"{human_bytes(r['tflm_arena_bytes'])} (head {human_bytes(r['tflm_arena_head_bytes'])})")]
    lines += [
        ("weights", lambda r: human_bytes(r.get("weights_bytes"))),
        (f"flash needed ({dev})", lambda r: human_bytes(r.get("flash_bytes"))),
        (f"fits {dev}", lambda r: "-" if "fits" not in r else ("yes" if r["fits"] else
                                                               "NO (" + ("flash " if not r["fits_flash"] else "")
                                                               + ("RAM" if not r["fits_ram"] else "") + ")")),
        ("energy / inference", lambda r: f"{r['energy_mj']:.3g} mJ" if r.get("energy_mj") is not None else "-"),
        ("  how", lambda r: r.get("energy_method", "-")),
        (f"  {dev} latency (est.)", lambda r: _ms(r, "energy_latency_ms")),
        ("process peak RSS", lambda r: human_bytes(r.get("inference_peak_rss_bytes"))),
    ]
    t = Table(title=title)
    t.add_column("metric")
    for r in rows:
        p = Path(r["name"])
        label = f"{p.parent.name}/{p.name}" if p.name in ("model.onnx", "model.tflite") else (p.name or r["name"])
        t.add_column(label, justify="right", overflow="fold")
    for name, fn in lines:
        t.add_row(name, *[fn(r) for r in rows])  # type: ignore[operator]
    return t


def print_deploy_table(rows: list[dict], con: Console | None = None) -> None:
    (con or console).print(deploy_table(rows))


@app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="ONNX file or edgeslim model folder"),
    out: Path = typer.Option(..., "--out", "-o", help="optimised ONNX file to write"),
    level: str = typer.Option("extended", help="ONNX Runtime level: disable, basic, extended, all (this CPU only)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """BN folding, constant folding + dead-node removal, then ONNX Runtime offline optimisation; lists fusions."""
    import tempfile

    from edgeslim.deploy.fit import to_onnx
    from edgeslim.deploy.memory import load
    from edgeslim.deploy.optimize import fold_and_prune, fold_batchnorm, ort_optimize
    from edgeslim.fsutil import write_bytes

    path, cleanup = to_onnx(model)
    try:
        m, n_bn = fold_batchnorm(load(path))
        m, info = fold_and_prune(m)
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            write_bytes(pre, m.SerializeToString())
            rep = ort_optimize(pre, out, level)
    finally:
        if cleanup:
            cleanup()
    d = {"batchnorm_folded_here": n_bn, **info, **rep.as_dict()}
    if as_json:
        _emit_json(d)
        return
    console.print(f"BatchNorm folded into Conv here: {n_bn} (left in the graph: {rep.batchnorm['batchnorm_nodes']})")
    console.print(f"constant folding + dead-node removal: {info['nodes_before']} -> {info['nodes_after']} nodes")
    console.print(f"ONNX Runtime '{level}': {rep.nodes_before} -> {rep.nodes_after} nodes, outputs within "
                  f"{rep.parity_max_abs_diff:.2g} -> {out}")
    for line in rep.fusions or ["no fusions"]:
        console.print(f"  {line}")
