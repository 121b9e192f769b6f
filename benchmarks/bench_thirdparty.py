"""Every model command on third-party ONNX models from PyPI wheels, given --inputs; prints a pass/fail table.

Get the models (nothing is downloaded at run time; see docs/benchmarks.md):
    pip download --no-deps rapidocr-onnxruntime==1.4.4 ddddocr==1.6.1 silero-vad==6.2.3 -d wheels
    for w in wheels/*.whl; do unzip -o -q "$w" '*.onnx' -d models; done
Run:
    python benchmarks/bench_thirdparty.py models/**/*.onnx --out-dir runs/thirdparty

Each model gets an --inputs .npz from bench_optimize.py's generator (structured synthetic inputs: digit
glyphs for the OCR models, a gated tone for the voice detectors), then goes through
`edgeslim measure / fit / arena / compile / optimize / export --format onnx`, each as its own process with the
shared options `--inputs FILE --device cortex-m4 --json`. A cell shows the command's headline figure, or
FAIL with the first line of its error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_optimize import PRESETS, write_inputs


def commands(model: Path, npz: Path, out: Path, device: str) -> dict[str, list[str]]:
    common = ["--inputs", str(npz), "--device", device, "--json"]
    return {
        "measure": ["measure", str(model), "--runs", "50", "--quick", *common],
        "fit": ["fit", str(model), *common],
        "arena": ["arena", str(model), *common],
        "compile": ["compile", str(model), "-o", str(out / f"{model.stem}.compiled.onnx"), *common],
        "optimize": ["optimize", str(model), "-o", str(out / f"{model.stem}.opt.onnx"), "--samples", "8",
                     "--bench-seconds", "2", *common],
        "export": ["export", str(model), "--format", "onnx", "-o", str(out / f"{model.stem}.export.onnx"), *common],
    }


def headline(cmd: str, d: dict | list) -> str:
    """The figure each command is for, short."""
    if cmd == "measure":
        r = d[0]  # type: ignore[index]
        return f"p50 {r['latency_ms_p50']:.3g} ms, " + (f"{r['macs']:,.0f} MACs" if r["macs"] else "MACs -")
    if isinstance(d, list):
        return "ok"
    if cmd == "fit":
        return f"{'fits' if d['fits'] else 'no'}: flash {d['flash_bytes'] / 1024:,.0f} KiB"
    if cmd == "arena":
        return f"{d['arena_bytes'] / 1024:,.1f} KiB" + (" (lower bound)" if d.get("lower_bound") else "")
    if cmd == "compile":
        return f"{d['nodes_before']} -> {d['nodes_after']} nodes, |diff| {d['parity_max_abs_diff']:.1g}"
    if cmd == "optimize":
        return f"{d['chosen']}, {d['side_by_side']['original']['size_bytes'] / d['side_by_side']['optimised']['size_bytes']:.2f}x smaller"
    return f"|diff| {d['parity_max_abs_diff']:.1g}, {len(d.get('repairs', []))} repair(s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/thirdparty"))
    ap.add_argument("--device", default="cortex-m4")
    ap.add_argument("--samples", type=int, default=8, help="samples per --inputs file")
    ap.add_argument("--only", default="", help="comma-separated commands (default: all)")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    only = [c for c in args.only.split(",") if c]
    rows = []
    for src in args.models:
        npz = args.out_dir / f"{src.stem}.inputs.npz"
        if not write_inputs(src, npz, args.samples):
            print(f"== {src}: no input preset; skipped", file=sys.stderr)
            continue
        row = {"model": src.name, "package": PRESETS[src.name][0]}
        for cmd, a in commands(src, npz, args.out_dir, args.device).items():
            if only and cmd not in only:
                continue
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "edgeslim.cli", *a], capture_output=True, text=True, check=False)
            dt = time.perf_counter() - t0
            if r.returncode == 0:
                row[cmd] = f"ok: {headline(cmd, json.loads(r.stdout))} ({dt:.0f} s)"
            else:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                row[cmd] = f"FAIL (exit {r.returncode}): {last[:160]}"
            print(f"{src.name} {cmd}: {row[cmd]}", file=sys.stderr, flush=True)
        rows.append(row)
    cols = [c for c in ("measure", "fit", "arena", "compile", "optimize", "export") if not only or c in only]
    print("| model (package) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        print(f"| {row['model']} ({row['package']}) | " + " | ".join(row.get(c, "-") for c in cols) + " |")
    failed = sum(str(row.get(c, "")).startswith("FAIL") for row in rows for c in cols)
    print(f"\n{failed} failure(s) in {len(rows)} models x {len(cols)} commands")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
