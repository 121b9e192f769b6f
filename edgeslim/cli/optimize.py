"""`edgeslim optimize` (make a third-party ONNX model smaller without making it slower or wrong),
`edgeslim compile` (graph compilation of one ONNX model) and `edgeslim export` (a model folder to ONNX,
.tflite or a C array)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim import api
from edgeslim.cli.app import app, console, emit_json
from edgeslim.cli.options import device_option, inputs_option, json_option, shape_option
from edgeslim.errors import EdgeslimError
from edgeslim.report.optimize import print_report
from edgeslim.report.results import human_bytes
from edgeslim.resources import peak_rss_line


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="ONNX model to optimise (opset 11 or newer)"),
    out: Path = typer.Option(..., "--out", "-o", help="optimised ONNX file to write"),
    inputs: Path | None = inputs_option("--calib", help=".npz with one array per model input name (samples on "
                                        "axis 0): calibration, fidelity checks, timing; --calib is its older name"),
    shape: list[str] = shape_option(),
    device: str = device_option("host", help="device profile name or YAML path (arena, energy)"),
    as_json: bool = json_option(),
    samples: int = typer.Option(32, min=1, help="samples to calibrate on; the other given samples (at least a "
                                "quarter) are held out for the fidelity check and the tolerance"),
    min_cosine: float | None = typer.Option(None, help="tolerance: min cosine similarity of every output "
                                            "(default 0.995 when no tolerance is given)"),
    max_abs: float | None = typer.Option(None, help="tolerance: max absolute error of any output element"),
    min_top1: float | None = typer.Option(None, help="tolerance: min top-1 agreement of classifier outputs (0-1)"),
    candidates: str = typer.Option("fp32-opt,w8,w16,int8-qdq,int8-qdq+w8,int8-qop,int8-dyn,fp16",
                                   help="comma-separated candidates to try"),
    exclude_op: list[str] = typer.Option([], "--exclude-op", help="op type never quantized/compressed (repeat)"),
    exclude_node: list[str] = typer.Option([], "--exclude-node", help="node name never quantized (repeat)"),
    sqnr_db: float = typer.Option(0.0, help="also keep float every INT8 layer whose output SQNR is under this (dB); "
                                  "0: off (layers stay float by output sensitivity and by speed)"),
    weight_min_elements: int = typer.Option(1024, help="weight-only storage for weights at least this large"),
    max_slowdown: float = typer.Option(0.05, help="a candidate may be this fraction slower than the original "
                                       "(median per-round time ratio; measurement noise)"),
    prefer: str = typer.Option("balanced", help="balanced: the fastest candidate at least --min-shrink times "
                               "smaller; speed: the fastest; size: the smallest (speed ties go to the smaller file)"),
    min_shrink: float = typer.Option(1.8, help="balanced: the size goal (original / candidate bytes)"),
    bench_seconds: float = typer.Option(8.0, help="seconds of interleaved latency runs in all"),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads"),
    seed: int = typer.Option(0, help="seed for synthetic inputs"),
    force: bool = typer.Option(False, help="write the closest candidate even if it breaks the tolerance"),
) -> None:
    """Optimise a third-party ONNX model: repair, graph-optimise, try FP16/INT8, check outputs, measure, pick.

    Among candidates within tolerance and not slower than the original, keeps the fastest one at least
    --min-shrink times smaller (--prefer tilts it); prints what was tried and why each won or lost.
    Writes nothing if the tolerance cannot be met (unless --force).
    """
    if not as_json:  # a long job: say what comes before it starts (and flush: logs and pipes see it now)
        console.print(f"optimize {model}: {'inputs from ' + str(inputs) if inputs else 'synthetic inputs'}; "
                      f"building candidates, then {bench_seconds:g} s of interleaved timing", highlight=False)
    from edgeslim.configs import build_config
    from edgeslim.measure.fidelity import Tolerance
    from edgeslim.onnxopt.run import OptimizeConfig

    given = any(v is not None for v in (min_cosine, max_abs, min_top1))  # else the default tolerance
    cfg = build_config(OptimizeConfig, "optimize", model=model, out=out, calib=inputs, shapes=shape, samples=samples,
                tol=Tolerance(min_cosine, max_abs, min_top1, max_prob_abs=None, min_agreement=None) if given
                else Tolerance(), tol_given=given,
                candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()), exclude_ops=set(exclude_op),
                exclude_nodes=set(exclude_node), sqnr_db=sqnr_db, weight_min_elements=weight_min_elements,
                max_slowdown=max_slowdown, bench_seconds=bench_seconds, threads=threads, device=device, seed=seed,
                force=force, prefer=prefer, min_shrink=min_shrink)
    res = api.optimize(cfg)
    if as_json:
        emit_json(res)
    else:
        print_report(res, console)
        console.print(peak_rss_line(), highlight=False)
        console.print(f"further (structured pruning + distillation on your inputs, no labels): edgeslim run "
                      f"edgeslim/recipes/any-model.yaml --model {model} --inputs X.npz --out RUN", highlight=False, soft_wrap=True)


@app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="ONNX file or edgeslim model folder"),
    out: Path = typer.Option(..., "--out", "-o", help="optimised ONNX file to write"),
    inputs: Path | None = inputs_option(help=".npz with one array per model input name: the parity check's data"),
    shape: list[str] = shape_option(),
    device: str | None = device_option(help="device profile name or YAML path: the compiled model's fit"),
    as_json: bool = json_option(),
    level: str = typer.Option("extended", help="ONNX Runtime level: disable, basic, extended, all (this CPU only)"),
) -> None:
    """BN folding, constant folding + dead-node removal, then ONNX Runtime offline optimisation; lists fusions."""
    d = api.compile_model(model, out, level, inputs=inputs, shapes=shape, device=device)
    if as_json:
        emit_json(d)
        return
    console.print(f"BatchNorm folded into Conv here: {d['batchnorm_folded_here']} (left in the graph: "
                  f"{d['batchnorm']['batchnorm_nodes']})")
    console.print(f"constant folding + dead-node removal: {d['fold_nodes_before']} -> {d['fold_nodes_after']} nodes")
    console.print(f"ONNX Runtime '{level}': {d['nodes_before']} -> {d['nodes_after']} nodes, outputs within "
                  f"{d['parity_max_abs_diff']:.2g} ({d['input_source']} inputs) -> {out}")
    for line in d["fusions"] or ["no fusions"]:
        console.print(f"  {line}")
    _fit_line(d.get("fit"))
    for k in ("device_note", "for_this_cpu"):
        if d.get(k):
            console.print(f"[yellow]note[/yellow] {d[k]}", highlight=False)
    for w in d["warnings"]:
        console.print(f"[yellow]note[/yellow] {w}", highlight=False)


def _fit_line(f: dict | None) -> None:
    if f:
        console.print(f"on {f['device']}: flash {human_bytes(f['flash_bytes'])} of {human_bytes(f['flash_available'])}, "
                      f"RAM {human_bytes(f['ram_bytes'])} of {human_bytes(f['ram_available'])}: "
                      + ("fits" if f["fits"] else "does NOT fit"), highlight=False)


@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="edgeslim model folder (or a .tflite file with --format c)"),
    fmt: str = typer.Option("tflite", "--format", "-f", help="onnx, tflite or c (a .c/.h pair for firmware)"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write (.onnx, .tflite, or the .c path)"),
    inputs: Path | None = inputs_option(help=".npz with the model input's samples: parity check data, and INT8 "
                                        "calibration when no task is known"),
    shape: list[str] = shape_option(),
    device: str | None = device_option(help="device profile name or YAML path: the exported file's fit"),
    as_json: bool = json_option(),
    int8: bool = typer.Option(False, "--int8", help="full-integer INT8 (int8 inputs and outputs)"),
    task: str | None = typer.Option(None, "--task", "-t",
                                    help="task for calibration, parity and accuracy (default: the training task)"),
    calibration_samples: int = typer.Option(256, help="representative samples for INT8 calibration"),
    per_tensor: bool = typer.Option(False, "--per-tensor",
                                    help="one weight scale per tensor (smaller file) instead of per channel"),
    trust_pickle: bool = typer.Option(False, help="allow loading a .pt pickle (runs code from the file)"),
    force: bool = typer.Option(False, "--force", help="write a .tflite that misses the parity check (labelled)"),
    min_arena: bool = typer.Option(False, "--min-arena", help="INT8 .tflite: patch-based first stage and operator "
                                   "order for a smaller TFLite Micro arena, outputs unchanged (proven in TFLite Micro)"),
    max_recompute: str = typer.Option("20%", "--max-recompute", help="--min-arena: MACs the patch halos may add"),
) -> None:
    """Export a model to ONNX, LiteRT (.tflite, FP32 or INT8) or a C array for TFLite Micro, parity-checked."""
    if min_arena and fmt.lower() not in ("tflite", "c"):
        raise EdgeslimError(f"--min-arena: rewrites .tflite files for TFLite Micro, not --format {fmt}")
    from edgeslim.configs import build_config

    opts = build_config(api.ExportOptions, "export", int8=int8, calibration_samples=calibration_samples,
                 per_channel=not per_tensor, trust_pickle=trust_pickle, device=device, force=force,
                 min_arena=min_arena, max_recompute=parse_fraction(max_recompute, "--max-recompute"))
    res = api.export(model, fmt, out, opts, task=task, inputs=inputs, shapes=shape)
    if as_json:
        emit_json(res)
        return
    line = f"wrote {res.get('c') or res['path']} ({res.get('precision', 'c')}, {human_bytes(res['size_bytes'])})"
    if "h" in res:
        line += f" and {res['h']}"
    console.print(line, highlight=False)
    for k in ("input", "output"):
        if k in res and res[k].get("scale"):
            i = res[k]
            console.print(f"  {k}: {i['dtype']} {i['shape']} scale {i['scale']:.6g} zero point {i['zero_point']}",
                          highlight=False)
    if "parity" in res or "parity_max_abs_diff" in res:
        p = res.get("parity", res)
        extra = f", top-1 agreement {100 * p['parity_top1_agreement']:.1f}%" if "parity_top1_agreement" in p else ""
        if "parity_accuracy" in p:
            extra += (f", accuracy {100 * p['parity_accuracy']:.2f}% vs {100 * p['parity_reference_accuracy']:.2f}% "
                      f"on {p['parity_samples']} test samples")
        console.print(f"  parity vs {p.get('parity_reference', 'PyTorch')}: max |diff| "
                      f"{p['parity_max_abs_diff']:.3g}{extra}", highlight=False)
    if res.get("parity_failed"):
        console.print(f"  [red]FAILS PARITY, written because of --force:[/red] {res['parity_failed']}", highlight=False)
    if res.get("accuracy") is not None:
        console.print(f"  accuracy: {100 * res['accuracy']:.2f}%", highlight=False)
    if res.get("tflm_arena"):
        a = res["tflm_arena"]
        console.print(f"  TFLite Micro arena: {human_bytes(a['total_bytes'])} (head {a['head_bytes']} B + tail "
                      f"{a['tail_bytes']} B)", highlight=False)
    if "tflm_top1_agreement" in res:
        console.print(f"  TFLite Micro vs LiteRT: same top-1 class on {100 * res['tflm_top1_agreement']:.0f}% of "
                      f"{res['tflm_checked_samples']} samples", highlight=False)
    if res.get("min_arena"):
        _min_arena_lines(res["min_arena"])
    _fit_line(res.get("fit"))


def parse_fraction(text: str, where: str) -> float:
    """'20%' or '0.2' -> 0.2; anything else is one clear error naming the option."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise EdgeslimError(f"{where} {text!r}: give a fraction of the MACs, e.g. 20% or 0.2") from None
    if not 0 <= v <= 10:
        raise EdgeslimError(f"{where} {text!r}: must be between 0% and 1000%")
    return v


def _min_arena_lines(m: dict) -> None:
    """What --min-arena did and TFLite Micro's proof."""
    a0, a1 = m["tflm_arena_plain"], m["tflm_arena"]
    how = []
    if m.get("patch_grid"):
        how.append(f"first {m['patch_stage_ops']} operators per patch ({m['patch_grid'][0]}x{m['patch_grid'][1]})")
    if m.get("reorder_method"):
        how.append(f"operators reordered ({m['reorder_method']})")
    if m.get("offline_plan"):
        how.append(f"offline memory plan in the metadata (head {m['greedy_head_bytes']} -> {m['planned_head_bytes']} B "
                   "vs TFLite Micro's own planner)")
    console.print(f"  --min-arena: {', '.join(how) or 'no rewrite lowers the arena of this model; file unchanged'}",
                  highlight=False)
    console.print(f"  TFLite Micro recorded arena: plain {human_bytes(a0['total_bytes'])} (head {a0['head_bytes']} B) -> "
                  f"{human_bytes(a1['total_bytes'])} (head {a1['head_bytes']} B): {100 * m['reduction']:.1f}% less; "
                  f"plain file kept as {m['plain_path']}", highlight=False)
    console.print(f"  MACs added by recompute: {m['macs_added']} ({100 * m['recompute_fraction']:.1f}%, budget "
                  f"{100 * m['max_recompute']:.0f}%); edgeslim's planned arena {human_bytes(m['planned_arena_bytes'])} "
                  f"({100 * m['planner_vs_tflm']:+.1f}% vs TFLite Micro)", highlight=False)
    if "compared_samples" in m:
        same = "identical" if m["outputs_identical"] else f"DIFFERENT on {m['compared_samples'] - m['identical_samples']}"
        acc = (f"; TFLite Micro accuracy plain {100 * m['accuracy_plain']:.2f}%, minimised {100 * m['accuracy']:.2f}%"
               if "accuracy" in m else "")
        console.print(f"  int8 outputs on {m['compared_samples']} test inputs: {same}{acc}", highlight=False)
    console.print(f"  estimated latency on {m['device']} ({m['latency_source']}): {m['latency_ms_plain']} -> "
                  f"{m['latency_ms']} ms; skyline: {m['skyline_png']}", highlight=False)
