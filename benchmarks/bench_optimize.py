"""`edgeslim optimize` on third-party ONNX models that ship inside PyPI wheels; prints one table.

Get the models (nothing is downloaded at run time; see docs/benchmarks.md):
    pip download --no-deps rapidocr-onnxruntime==1.4.4 ddddocr==1.6.1 silero-vad==6.2.3 -d wheels
    for w in wheels/*.whl; do unzip -o -q "$w" '*.onnx' -d models; done
Run:
    python benchmarks/bench_optimize.py models/rapidocr_onnxruntime/models/*.onnx models/ddddocr/common.onnx ...

Inputs: for the models in PRESETS, structured synthetic inputs are built here (dark digit glyphs from
scikit-learn's bundled digits set on a white background, normalised as the model's package does; a
gated tone in noise for the VAD), written to an .npz and passed as --calib. They are not real OCR or
speech data: the fidelity columns compare the optimised model to the original on these inputs, which
is what `edgeslim optimize` checks; task accuracy is not measured. Other models get N(0,1) inputs
(`--shape NAME=...` where dims are symbolic).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from edgeslim.onnxopt.run import OptimizeConfig, optimize
from edgeslim.report.optimize import print_report


def _glyphs(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """`n` grey images [n, h, w] in 0..1: white background with rows of dark digit glyphs."""
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0  # [1797, 8, 8] in 0..1
    out = np.ones((n, h, w), np.float32)
    for i in range(n):
        lo = max(8, min(h // 4, 16))
        size = int(rng.integers(lo, max(lo + 1, min(h // 2, 40) + 1)))
        rows = range(int(rng.integers(0, max(1, h // 8))), h - size + 1, size * 2) if h > 2 * size else [
            (h - size) // 2]
        for y in rows:
            x = int(rng.integers(0, size))
            while x + size <= w:
                g = digits[rng.integers(0, len(digits))]
                g = np.kron(g, np.ones((size // 8 + 1, size // 8 + 1)))[:size, :size]
                out[i, y : y + size, x : x + size] = np.minimum(out[i, y : y + size, x : x + size], 1.0 - g)
                x += size + int(rng.integers(0, size // 2 + 1))
    return np.clip(out + rng.normal(0, 0.03, out.shape), 0, 1).astype(np.float32)


def _rgb(img: np.ndarray, mean, std) -> np.ndarray:
    x = np.repeat(img[:, None], 3, axis=1)
    return ((x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]).astype(
        np.float32)


def _audio(rng: np.random.Generator, n: int, chunk: int) -> np.ndarray:
    t = np.arange(n * chunk) / 16000
    gate = (t % 0.6) < 0.3
    sig = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(7 * t))) * gate + 0.02 * rng.standard_normal(t.size)
    return sig.astype(np.float32).reshape(n, chunk)


def _vad(rng, n, chunk=512, sr=True, state="state"):
    d = {"input": _audio(rng, n, chunk), state: np.zeros((2, 1, 128), np.float32)}
    if sr:
        d["sr"] = np.array(16000, np.int64)
    return d


# file name -> (source package, builder of {input name: array with samples on axis 0})
PRESETS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ("rapidocr-onnxruntime 1.4.4", lambda r, n: {
        "x": _rgb(_glyphs(r, 48, 192, n), [0.5] * 3, [0.5] * 3)}),
    "ch_PP-OCRv4_rec_infer.onnx": ("rapidocr-onnxruntime 1.4.4", lambda r, n: {
        "x": _rgb(_glyphs(r, 48, 320, n), [0.5] * 3, [0.5] * 3)}),
    "ch_PP-OCRv4_det_infer.onnx": ("rapidocr-onnxruntime 1.4.4", lambda r, n: {
        "x": _rgb(_glyphs(r, 320, 320, n), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}),
    "common.onnx": ("ddddocr 1.6.1", lambda r, n: {"input1": ((_glyphs(r, 64, 160, n) - 0.5) / 0.5)[:, None]}),
    "common_det.onnx": ("ddddocr 1.6.1", lambda r, n: {"images": _rgb(_glyphs(r, 416, 416, n) * 255, [0] * 3, [1] * 3)}),
    "silero_vad.onnx": ("silero-vad 6.2.3", lambda r, n: _vad(r, n)),
    "silero_vad_16k_op15.onnx": ("silero-vad 6.2.3", lambda r, n: _vad(r, n)),
    "silero_vad_op18_ifless.onnx": ("silero-vad 6.2.3", lambda r, n: _vad(r, n)),
    # not in the optimize table (older or variant files of the same wheels), inputs for bench_thirdparty.py
    "common_old.onnx": ("ddddocr 1.6.1", lambda r, n: {"input1": ((_glyphs(r, 64, 160, n) - 0.5) / 0.5)[:, None]}),
    "silero_vad_16k_sequence.onnx": ("silero-vad 6.2.3", lambda r, n: {
        "input": _audio(r, n * 4, 576).reshape(n, 4, 576), "h": np.zeros((1, 1, 128), np.float32),
        "c": np.zeros((1, 1, 128), np.float32)}),
    "silero_vad_half.onnx": ("silero-vad 6.2.3", lambda r, n: _vad(r, n, sr=False)),
    "silero_vad_openvino_16k.onnx": ("silero-vad 6.2.3", lambda r, n: _vad(r, n, chunk=576, sr=False)),
}
OPTIMIZE_TABLE = ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_PP-OCRv4_det_infer.onnx",
                  "common.onnx", "common_det.onnx", "silero_vad.onnx", "silero_vad_16k_op15.onnx",
                  "silero_vad_op18_ifless.onnx")


def write_inputs(src: Path, dst: Path, n: int, seed: int = 0) -> bool:
    """Write the structured synthetic inputs of a preset model to `dst` (.npz); False for other models."""
    make = PRESETS.get(src.name, ("?", None))[1]
    if make is None:
        return False
    np.savez(dst, **make(np.random.default_rng(seed), n))
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=16, help="calibration/check feeds per model")
    ap.add_argument("--bench-seconds", type=float, default=6.0, help="interleaved latency time per model, s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the optimised models here")
    ap.add_argument("--device", default="host", help="device profile for the energy estimate")
    args = ap.parse_args(argv)
    rows = []
    err = Console(stderr=True, width=160)  # the full per-model report; the summary table goes to stdout
    with tempfile.TemporaryDirectory() as td:
        for i, src in enumerate(args.models):
            pkg = PRESETS.get(src.name, ("?", None))[0]
            calib: Path | None = Path(td) / f"{i}.npz"
            if not write_inputs(src, calib, args.samples, seed=i):  # type: ignore[arg-type]
                calib = None
            out = (args.out_dir or Path(td)) / f"{src.stem}.opt.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"== {src} ({pkg})", file=sys.stderr, flush=True)
            res = optimize(OptimizeConfig(model=src, out=out, calib=calib, samples=args.samples,
                                          bench_seconds=args.bench_seconds, threads=args.threads, device=args.device))
            print_report(res, err)
            a, b = res["side_by_side"]["original"], res["side_by_side"]["optimised"]
            ch = next((c for c in res["candidates"] if c["name"] == res["chosen"]), {})
            tried = " ".join(f"{c['name']}:{c['status'].split(':')[0]}" for c in res["candidates"])
            rows.append((src.name, pkg, a["size_bytes"], b["size_bytes"], a["latency"]["latency_ms_p50"],
                         b["latency"]["latency_ms_p50"], res["chosen"], ch.get("cosine"), ch.get("max_abs_err"),
                         ch.get("top1_agreement"), tried))
    print("| model (package) | size KiB orig -> opt | x smaller | p50 ms orig -> opt | chosen | cosine | "
          "max abs err | top-1 agr. | candidates (status) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = (lambda v, s: "-" if v is None else format(v, s))
        print(f"| {r[0]} ({r[1]}) | {r[2] / 1024:,.0f} -> {r[3] / 1024:,.0f} | {r[2] / r[3]:.2f} | "
              f"{r[4]:.3f} -> {r[5]:.3f} | {r[6]} | {f(r[7], '.5f')} | {f(r[8], '.3g')} | {f(r[9], '.3f')} | {r[10]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
