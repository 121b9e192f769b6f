"""`edgeslim measure` (with its deploy table), `edgeslim fit` and `edgeslim arena`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.cli.battery import battery_lines
from edgeslim.cli.options import device_option, inputs_option, json_option, shape_option
from edgeslim.fsutil import write_json
from edgeslim.measure.battery import LifeOptions
from edgeslim.report.results import human_bytes, print_table

BATTERY_HELP = "battery for a lifetime estimate, e.g. 225mAh@3V or 0.675Wh (default: the device profile's)"
RATE_HELP = "inferences per time for the lifetime estimate: 1/s, 10/min, 0.5/s, 1/h (default 1/s)"
BETWEEN_HELP = "power state between inferences: sleep (profile sleep_power_mw, the default where set) or idle"
FLEET_HELP = "also the yearly energy (kWh) and CO2 of this many such devices"
GRID_HELP = "grid carbon intensity for --fleet, g CO2e/kWh (default 475: world average, IEA 2019)"


@app.command()
def measure(
    models: list[Path] = typer.Argument(..., help="ONNX files, edgeslim model folders or .tflite files (or text "
                                        "encoders: Hugging Face folders, text-run stage folders)"),
    inputs: Path | None = inputs_option(),
    shape: list[str] = shape_option(),
    device: str | None = device_option("host"),
    as_json: bool = json_option(),
    task: str | None = typer.Option(None, "--task", "-t", help="task for accuracy (none: no accuracy; text "
                                    "encoders: the sentences for fidelity, default 'sentences')"),
    reference: Path | None = typer.Option(None, "--reference", help="model to compare outputs with (fidelity)"),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads"),
    runs: int = typer.Option(200, help="timed runs per model"),
    batch: int | None = typer.Option(None, help="also time this batch size"),
    quick: bool = typer.Option(False, help="skip PyTorch eager latency, parity and process peak RSS"),
    battery: str | None = typer.Option(None, help=BATTERY_HELP),
    rate: str | None = typer.Option(None, help=RATE_HELP),
    between: str | None = typer.Option(None, help=BETWEEN_HELP),
    fleet: int | None = typer.Option(None, help=FLEET_HELP),
    grid_intensity: float | None = typer.Option(None, help=GRID_HELP),
    save: Path | None = typer.Option(None, "--save", help="also write the results to this JSON file"),
) -> None:
    """Measure size, parameters, MACs, latency, arena, flash, fit, energy (accuracy with --task, fidelity with
    --reference) side by side; with a battery (option or the device profile's), the estimated battery life."""
    from edgeslim.configs import build_config
    from edgeslim.measure.options import MeasureOptions

    opts = build_config(MeasureOptions, "measure", threads=threads, runs=runs, device=device, batch=batch, shapes=shape,
                 reference=reference, torch_eager=not quick, rss=not quick)
    res = api.measure(models, opts, task=task, inputs=inputs,
                      life=LifeOptions(battery, rate, between, fleet, grid_intensity))
    if save is not None:
        write_json(save, res)
    if as_json:
        emit_json(res)
    else:
        text = any("cosine" in r for r in res)  # text encoders: cosine / agreement to the first model given
        print_table(res, title="edgeslim measure" + (" (text encoders; latency p50 at sequence length 128, cosine "
                                                     "and NN agreement vs the first model)" if text else ""),
                    console=console)
        if text:
            return
        console.print(deploy_table(res))
        for r in res:
            for w in r.get("warnings", []):
                console.print(f"[yellow]note[/yellow] {Path(r['name']).name}: {w}", highlight=False)
        for row in res:
            if row.get("battery"):
                console.print(f"[bold]{row['name']}[/bold] on {row['battery']['device']}:")
                for line in battery_lines(row["battery"]):
                    console.print(f"  {line}", highlight=False)
        for row in res:
            if row.get("vela"):
                console.print(f"[bold]{row['name']}[/bold] on an Ethos-U NPU:")
                vela_lines(row["vela"])


def vela_lines(v: dict) -> None:
    """Vela's figures for an Ethos-U profile (or the one line saying what is missing)."""
    if "missing" in v:
        console.print(f"  [yellow]note[/yellow] {v['missing']}", highlight=False)
        return
    cpu = f"CPU fallback: {', '.join(v['cpu_fallback'])}" if v["cpu_fallback"] else "no CPU fallback"
    console.print(f"  Vela ({v['accelerator']}, {v['system_config']}, {v['memory_mode']}), estimated:vela: SRAM "
                  f"{human_bytes(v['sram_bytes'])} {_verdict(v.get('fits_sram'))}, flash {human_bytes(v['flash_bytes'])}"
                  f" {_verdict(v.get('fits_flash'))}, {v['cycles']:,} cycles = {v['latency_ms']:.3g} ms at "
                  f"{v['clock_hz'] / 1e6:.0f} MHz; {v['npu_ops']} NPU / {v['cpu_ops']} CPU operators ({cpu})",
                  highlight=False)


def _min_arena_line(m: dict, available: int) -> None:
    """What `export --min-arena` would change to a model that misses its RAM budget."""
    console.print(f"  as an INT8 .tflite in TFLite Micro: RAM {human_bytes(m['ram_bytes_plain'])} plain "
                  f"{_verdict(m['fits_ram_plain'])}; with --min-arena: RAM {human_bytes(m['ram_bytes'])} of "
                  f"{human_bytes(available)} {_verdict(m['fits_ram'])} (arena {human_bytes(m['arena_bytes_plain'])} -> "
                  f"{human_bytes(m['arena_bytes'])}, {human_bytes(m['saves_bytes'])} less, "
                  f"{100 * m['recompute_fraction']:.1f}% MACs recomputed; {m['arena_source']})", highlight=False)
    if m.get("command") and m["fits_ram"]:
        console.print(f"    {m['command']}", highlight=False)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("[green]fits[/green]" if ok else "[red]does not fit[/red]")


@app.command("fit")
def fit_cmd(
    model: Path = typer.Argument(..., help="ONNX file, edgeslim model folder or .tflite file"),
    inputs: Path | None = inputs_option(),
    shape: list[str] = shape_option(),
    device: str = device_option("cortex-m4"),
    as_json: bool = json_option(),
    arena: int | None = typer.Option(None, help="use this arena size (bytes) instead of the planner's"),
    battery: str | None = typer.Option(None, help=BATTERY_HELP),
    rate: str | None = typer.Option(None, help=RATE_HELP),
    between: str | None = typer.Option(None, help=BETWEEN_HELP),
    fleet: int | None = typer.Option(None, help=FLEET_HELP),
    grid_intensity: float | None = typer.Option(None, help=GRID_HELP),
) -> None:
    """Does MODEL fit DEVICE? Weights vs flash, activation arena vs RAM; estimated latency, energy and, with a
    battery (option or the profile's), the estimated battery life."""
    r = api.check_fit(model, device, arena_bytes=arena, inputs=inputs, shapes=shape,
                      life=LifeOptions(battery, rate, between, fleet, grid_intensity))
    if as_json:
        emit_json(r)
        return
    console.print(f"[bold]{model}[/bold] on [bold]{r['device']}[/bold]: {_verdict(r['fits'])}")
    console.print(f"  flash: {human_bytes(r['flash_bytes'])} needed (weights {human_bytes(r['weights_bytes'])} + "
                  f"runtime {human_bytes(r['flash_bytes'] - r['weights_bytes'])}) of "
                  f"{human_bytes(r['flash_available'])}  {_verdict(r['fits_flash'])}")
    console.print(f"  RAM:   {human_bytes(r['ram_bytes'])} needed (arena {human_bytes(r['arena_bytes'])} "
                  f"({r['arena_source']}) + runtime {human_bytes(r['ram_bytes'] - r['arena_bytes'])}) of "
                  f"{human_bytes(r['ram_available'])}  {_verdict(r['fits_ram'])}")
    if r["energy_mj"] is not None and r["latency_ms"] is not None:
        console.print(f"  latency ~{r['latency_ms']:.3g} ms, energy ~{r['energy_mj']:.3g} mJ per inference "
                      f"({r['energy_method']})")
    beside = r.get("arena_beside")
    if beside:
        console.print(f"  arena: planner {human_bytes(beside['planner_arena_bytes'])} ({Path(beside['onnx']).name}) vs "
                      f"TFLite Micro head {human_bytes(beside['tflm_arena_head_bytes'])} + tail "
                      f"{human_bytes(beside['tflm_arena_tail_bytes'])} ({Path(beside['tflite']).name}): planner "
                      f"{beside['planner_vs_tflm_head_pct']:+.1f}% vs head", highlight=False)
    for line in r["reasons"]:
        console.print(f"  [red]-[/red] {line}")
    if r.get("min_arena"):
        _min_arena_line(r["min_arena"], r["ram_available"])
    if r.get("vela"):
        vela_lines(r["vela"])
    if r.get("arena_note"):
        console.print(f"  [yellow]note[/yellow] arena: {r['arena_note']}", highlight=False)
    for w in r.get("warnings", []):
        console.print(f"  [yellow]note[/yellow] {w}", highlight=False)
    for line in battery_lines(r["battery"]) if r.get("battery") else []:
        console.print(f"  {line}", highlight=False)


@app.command("arena")
def arena_cmd(
    model: Path = typer.Argument(..., help="ONNX file or edgeslim model folder"),
    inputs: Path | None = inputs_option(),
    shape: list[str] = shape_option(),
    device: str | None = device_option(help="device profile name or YAML path: does the arena fit its RAM"),
    as_json: bool = json_option(),
    no_fuse_qdq: bool = typer.Option(False, help="plan QDQ float tensors as float (no int8 kernel fusion)"),
    align: int = typer.Option(16, help="buffer alignment in bytes (TFLite Micro: 16)"),
    write_reordered: Path | None = typer.Option(None, help="write the model with its nodes in the best order"),
) -> None:
    """Static activation arena plan: buffers, lifetimes, offsets; naive sum vs planned arena."""
    plan = api.plan_arena(model, fuse_qdq=not no_fuse_qdq, align=align, write_reordered=write_reordered,
                          inputs=inputs, shapes=shape, device=device)
    if as_json:
        emit_json(plan.as_dict(buffers=True))
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
    if plan.control_flow:
        console.print("[yellow]warning:[/yellow] If/Loop/Scan bodies are not planned: the arena is a lower bound")
    if plan.fit is not None:
        f = plan.fit
        console.print(f"RAM on {f['device']}: {human_bytes(f['ram_bytes'])} needed (arena + runtime "
                      f"{human_bytes(f['runtime_ram_bytes'])}) of {human_bytes(f['ram_available'])}  "
                      f"{_verdict(f['fits_ram'])}")
    for w in plan.warnings:
        console.print(f"[yellow]note[/yellow] {w}", highlight=False)


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
    if any(r.get("fidelity") for r in rows):
        fid = (lambda r, k, f: "-" if not r.get("fidelity") or r["fidelity"].get(k) is None
               else format(r["fidelity"][k], f))
        lines += [("vs reference: samples compared", lambda r: fid(r, "samples_compared", "d")),
                  ("  cosine (worst output)", lambda r: fid(r, "cosine", ".6f")),
                  ("  max / mean abs error", lambda r: f"{fid(r, 'max_abs_err', '.3g')} / {fid(r, 'mean_abs_err', '.3g')}"),
                  ("  top-1 agreement", lambda r: fid(r, "top1_agreement", ".4f"))]
    lines += [
        ("activation arena (planner)", lambda r: human_bytes(
            r.get("planner_arena_bytes") if r.get("runtime") == "litert" else r.get("arena_bytes"))
         + (" (lower bound)" if r.get("arena_lower_bound") else "")),
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
