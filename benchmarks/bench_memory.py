"""Peak memory of `edgeslim optimize` on a real detector: it must follow the batch, not the samples (issue 23).

    python benchmarks/bench_memory.py MODEL.onnx --samples 256 [--held-out 64] [--candidates ...]
    python benchmarks/bench_memory.py --scan      # calibration alone: peak RSS at 32 / 128 / 512 samples
    python benchmarks/bench_memory.py MODEL.onnx --samples 256 --calibrate-only   # ORT static INT8 only

Writes structured synthetic inputs for MODEL (document-like pages: rows of dark digit glyphs on white,
ImageNet-normalised RGB at the model's fixed input size; the layout_cdla preset) to an .npz sample by
sample (the generator never holds them all), then runs `edgeslim optimize` in a child process and prints
its wall time, its peak RSS (ru_maxrss, from the command's --json) and what it chose.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # rapid-layout's preprocessing (x / 255, ImageNet)


def write_npz_streamed(dst: Path, name: str, n: int, sample_shape: tuple[int, ...], make, chunk: int = 8) -> int:
    """An uncompressed .npz with one float32 array `name` [n, *sample_shape], written `chunk` samples at a
    time (`make(k)` returns k samples). Returns the file size in bytes."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (n, *sample_shape)}
    tmp = dst.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z, \
            z.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(f, header)
        done = 0
        while done < n:
            k = min(chunk, n - done)
            f.write(np.ascontiguousarray(make(k), np.float32).tobytes())
            done += k
    os.replace(tmp, dst)
    return dst.stat().st_size


def scan(work: Path) -> None:
    """Peak RSS of ONNX Runtime static calibration alone (tests/test_calibration_memory.py's conv model and
    child process per run) at 32, 128 and 512 samples, for MinMax and entropy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "calib_mem", Path(__file__).resolve().parent.parent / "tests" / "test_calibration_memory.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work.mkdir(parents=True, exist_ok=True)
    print("| method | input | 32 samples | 128 samples | 512 samples | 512 / 32 |")
    print("|---|---|---:|---:|---:|---:|")
    for method, hw in (("minmax", 128), ("entropy", 128), ("entropy", 64)):
        kib = [mod._peak_kib(work, n, method, hw) for n in (32, 128, 512)]
        print(f"| {method} | 3x{hw}x{hw} | " + " | ".join(f"{k / 1024:.0f} MiB" for k in kib)
              + f" | {kib[2] / kib[0]:.2f}x |", flush=True)


def calibrate_only(model: Path, npz: Path, samples: int, method: str) -> dict:
    """ONNX Runtime static INT8 of `model` calibrated (`method`) on the first `samples` feeds of `npz`, the
    feeds read lazily from disk; in this process. Returns wall time (s) and peak RSS (VmHWM, bytes)."""
    import tempfile

    from edgeslim.onnxkit import quant as oq
    from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds

    t0 = time.time()
    feeds = load_npz_feeds(npz, input_specs(onnx.load(str(model))))[:samples]
    with tempfile.TemporaryDirectory() as td:
        oq.quantize_static(model, Path(td) / "q.onnx", feeds, oq.parse_format("u8s8-pc"), method=method)
        size = (Path(td) / "q.onnx").stat().st_size
    hwm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    return {"samples": len(feeds), "method": method, "wall_s": round(time.time() - t0, 1),
            "peak_rss_bytes": hwm[0] if hwm else None, "int8_bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--scan", action="store_true", help="calibration alone at 32 / 128 / 512 samples")
    ap.add_argument("--calibrate-only", default="", help="only ORT static INT8 with this method (minmax, entropy)")
    ap.add_argument("--samples", type=int, default=256, help="samples to calibrate on")
    ap.add_argument("--held-out", type=int, default=64, help="more samples in the file (optimize holds out at "
                    "least a quarter of all given samples, so --samples calibrate only when held-out >= samples / 3)")
    ap.add_argument("--candidates", default="", help="optimize --candidates (default: all)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_memory"))
    ap.add_argument("--bench-seconds", type=float, default=8.0)
    a = ap.parse_args(argv)
    if a.scan:
        scan(a.work / "scan")
        return 0
    if a.model is None:
        ap.error("give MODEL.onnx or --scan")
    a.work.mkdir(parents=True, exist_ok=True)
    inp = onnx.load(str(a.model), load_external_data=False).graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)  # [1, 3, H, W], fixed
    n = a.samples + a.held_out
    npz = a.work / f"{a.model.stem}_{n}.npz"
    if not npz.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_optimize import _glyphs, _rgb

        rng = np.random.default_rng(0)
        size = write_npz_streamed(npz, inp.name, n, shape, lambda k: _rgb(_glyphs(rng, shape[2], shape[3], k),
                                                                           MEAN, STD)[:, None])
        print(f"wrote {npz}: {n} samples of {list(shape)}, {size / 2**30:.2f} GiB", flush=True)
    if a.calibrate_only:
        r = calibrate_only(a.model, npz, a.samples, a.calibrate_only)
        print(f"| {a.model.name} | {r['method']} | {r['samples']} samples | {r['wall_s']:.0f} s | "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB |")
        return 0
    cmd = [sys.executable, "-m", "edgeslim.cli", "optimize", str(a.model), "--inputs", str(npz), "--samples",
           str(a.samples), "--bench-seconds", str(a.bench_seconds), "-o", str(a.work / f"{a.model.stem}.opt.onnx"),
           "--json"] + (["--candidates", a.candidates] if a.candidates else [])
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        print(p.stderr[-3000:])
        return p.returncode
    res = json.loads(p.stdout)
    (a.work / f"{a.model.stem}.json").write_text(json.dumps(res, indent=1))
    rss = res["peak_rss_bytes"]
    print("| model | samples (calibration / held out) | input file | wall | peak RSS | chosen |")
    print("|---|---|---|---|---|---|")
    s = res["samples"]
    print(f"| {a.model.name} | {s['calibration_count']} / {s['held_out_count']} | {npz.stat().st_size / 2**30:.2f} GiB "
          f"| {wall:.0f} s | {rss['self'] / 2**30:.2f} GiB | {res['chosen']} |")
    for c in res["candidates"]:
        print(f"  {c['name']}: {c['status']} size {c.get('size_bytes')} cosine {c.get('cosine')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
