"""`edgeslim export MODEL --format onnx|tflite|c [--int8] -o OUT`."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim.cli import _emit_json, app, console


@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="edgeslim model folder (or a .tflite file with --format c)"),
    fmt: str = typer.Option("tflite", "--format", "-f", help="onnx, tflite or c (a .c/.h pair for firmware)"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write (.onnx, .tflite, or the .c path)"),
    int8: bool = typer.Option(False, "--int8", help="full-integer INT8 (int8 inputs and outputs)"),
    task: str | None = typer.Option(None, "--task", "-t",
                                    help="task for calibration, parity and accuracy (default: the training task)"),
    calibration_samples: int = typer.Option(256, help="representative samples for INT8 calibration"),
    per_tensor: bool = typer.Option(False, "--per-tensor",
                                    help="one weight scale per tensor (smaller file) instead of per channel"),
    trust_pickle: bool = typer.Option(False, help="allow loading a .pt pickle (runs code from the file)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Export a model to ONNX, LiteRT (.tflite, FP32 or INT8) or a C array for TFLite Micro, parity-checked."""
    from edgeslim.litert.export import export_model
    from edgeslim.report.results import human_bytes

    res = export_model(model, fmt.lower(), out, int8=int8, task=task,  # type: ignore[arg-type]
                       calibration_samples=calibration_samples, trust_pickle=trust_pickle,
                       per_channel=not per_tensor)
    if as_json:
        _emit_json(res)
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
        console.print(f"  parity vs {p.get('parity_reference', 'PyTorch')}: max |diff| "
                      f"{p['parity_max_abs_diff']:.3g}{extra}", highlight=False)
    if res.get("accuracy") is not None:
        console.print(f"  accuracy: {100 * res['accuracy']:.2f}%", highlight=False)
    if res.get("tflm_arena"):
        a = res["tflm_arena"]
        console.print(f"  TFLite Micro arena: {human_bytes(a['total_bytes'])} (head {a['head_bytes']} B + tail "
                      f"{a['tail_bytes']} B)", highlight=False)
    if "tflm_top1_agreement" in res:
        console.print(f"  TFLite Micro vs LiteRT: same top-1 class on {100 * res['tflm_top1_agreement']:.0f}% of "
                      f"{res['tflm_checked_samples']} samples", highlight=False)
