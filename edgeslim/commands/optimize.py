"""`edgeslim optimize`: make a third-party ONNX model smaller without making it slower or wrong."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeslim.cli import _emit_json, app, console


@app.command()
def optimize(
    model: Path = typer.Argument(..., help="ONNX model to optimise (opset 11 or newer)"),
    out: Path = typer.Option(..., "--out", "-o", help="optimised ONNX file to write"),
    calib: Path | None = typer.Option(None, "--calib", help=".npz with one array per model input name"),
    shape: list[str] = typer.Option([], "--shape", help="NAME=D0,D1,... for inputs with unknown dims (repeat)"),
    samples: int = typer.Option(32, min=1, help="feeds used for calibration and the fidelity check"),
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
    device: str = typer.Option("host", help="device profile for the energy estimate"),
    seed: int = typer.Option(0, help="seed for synthetic inputs"),
    force: bool = typer.Option(False, help="write the closest candidate even if it breaks the tolerance"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Optimise a third-party ONNX model: repair, graph-optimise, try FP16/INT8, check outputs, measure, pick.

    Among candidates within tolerance and not slower than the original, keeps the fastest one at least
    --min-shrink times smaller (--prefer tilts it); prints what was tried and why each won or lost.
    Writes nothing if the tolerance cannot be met (unless --force).
    """
    from edgeslim.errors import EdgeslimError
    from edgeslim.onnxopt.fidelity import Tolerance
    from edgeslim.onnxopt.report import print_report
    from edgeslim.onnxopt.run import OptimizeConfig
    from edgeslim.onnxopt.run import optimize as run_optimize

    if prefer not in ("balanced", "size", "speed"):
        raise EdgeslimError(f"--prefer {prefer!r}: valid values are balanced, size, speed")
    given = any(v is not None for v in (min_cosine, max_abs, min_top1))
    tol = Tolerance(min_cosine if given else 0.995, max_abs, min_top1)
    cfg = OptimizeConfig(
        model=model, out=out, calib=calib, shapes=list(shape), samples=samples, seed=seed, tol=tol, tol_given=given,
        candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()),
        exclude_ops=set(exclude_op), exclude_nodes=set(exclude_node), sqnr_db=sqnr_db,
        weight_min_elements=weight_min_elements, max_slowdown=max_slowdown, bench_seconds=bench_seconds,
        prefer=prefer, min_shrink=min_shrink,
        threads=threads, device=device, force=force,
    )
    res = run_optimize(cfg)
    if as_json:
        _emit_json(res)
    else:
        print_report(res, console)
