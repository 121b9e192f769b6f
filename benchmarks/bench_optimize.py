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
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from edgeslim.measure.fidelity import Tolerance
from edgeslim.onnxopt.candidates import ABLATION
from edgeslim.onnxopt.run import OptimizeConfig, optimize_onnx
from edgeslim.quant.int8_plan import Int8Options
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


def _text_presets() -> dict:
    """The OCR presets with rendered text (`text_inputs`) in place of digit glyphs; same normalisation."""
    import text_inputs as t

    return {
        "ch_ppocr_mobile_v2.0_cls_infer.onnx": lambda r, n: {"x": _rgb(t.lines(r, 48, 192, n, flip=0.3), [0.5] * 3,
                                                                        [0.5] * 3)},
        "ch_PP-OCRv4_rec_infer.onnx": lambda r, n: {"x": _rgb(t.lines(r, 48, 320, n), [0.5] * 3, [0.5] * 3)},
        "ch_PP-OCRv4_det_infer.onnx": lambda r, n: {"x": _rgb(t.pages(r, 320, 320, n), [0.485, 0.456, 0.406],
                                                              [0.229, 0.224, 0.225])},
        "common.onnx": lambda r, n: {"input1": ((t.lines(r, 64, 160, n) - 0.5) / 0.5)[:, None]},
        "common_det.onnx": lambda r, n: {"images": _rgb(t.pages(r, 416, 416, n, scattered=True) * 255, [0] * 3,
                                                        [1] * 3)},
    }


STYLES = ("glyphs", "text")


def write_inputs(src: Path, dst: Path, n: int, seed: int = 0, style: str = "glyphs") -> bool:
    """Write the structured synthetic inputs of a preset model to `dst` (.npz); False for other models.
    `style` "text": rendered text lines and pages for the OCR models (`text_inputs`); others as "glyphs"."""
    make = (_text_presets().get(src.name) if style == "text" else None) or PRESETS.get(src.name, ("?", None))[1]
    if make is None:
        return False
    np.savez(dst, **make(np.random.default_rng(seed), n))
    return True


def _ratio(res: dict, name: str) -> float | None:
    """Speed-up of candidate `name` over the original (p50 ratio from the same interleaved run)."""
    c = next((c for c in res["candidates"] if c["name"] == name), None)
    if not c or not c.get("latency_ms_p50"):
        return None
    return res["original"]["latency_ms_p50"] / c["latency_ms_p50"]


def _cand(res: dict, name: str) -> dict:
    return next((c for c in res["candidates"] if c["name"] == name), {})


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def ablation_rows(name: str, res: dict, nofold: dict | None) -> list[str]:
    """One markdown row per model: what each technique measured in this run (see docs/benchmarks.md)."""
    p = res.get("int8_plan") or {}
    st = p.get("steps", {})

    def step(k: str) -> str:
        v = st.get(k)
        if not v:
            return "n/a"
        return f"{v['before']:.4f} -> {v['after']:.4f}" + (" kept" if v["kept"] else " dropped")

    cal = st.get("calibration", {})
    cal_s = (", ".join(f"{k} {v:.4f}" for k, v in cal.get("cosine", {}).items()) + f" -> {cal.get('chosen')}"
             if cal else "n/a")
    fmt = st.get("format", {})
    fmt_s = (", ".join(f"{k} {v:.2f}x" for k, v in fmt.get("speedup_vs_fp32", {}).items()) if fmt else "n/a")

    def cv(n: str) -> str:
        c = _cand(res, n)
        return f"{_fmt(_ratio(res, n))}x / {_fmt(c.get('cosine'), '.4f')}" if c.get("cosine") is not None else "-"

    fold = "-"
    if nofold is not None:
        fold = (f"{_fmt(_ratio(res, res['chosen']))}x ({res['chosen']}) vs {_fmt(_ratio(nofold, nofold['chosen']))}x "
                f"({nofold['chosen']}) without")
    fid, spd = st.get("fidelity", {}), st.get("speed", {})
    chk = st.get("speed_check")
    chk_s = "" if not chk else (", kept by the whole-model check" if chk["kept"] else ", undone by the whole-model check")
    return [f"| {name} | {fold} | {step('cle')} | {step('bias_correction')} | {cal_s} | {step('adaround')} | "
            f"{cv('int8-qdq')} ({fid.get('float', '-')} of {fid.get('of', '-')} float for fidelity) | "
            f"{cv('int8-no-fidelity-fallback')} | {cv('int8-no-speed-choice')} ({spd.get('float', '-')} float for "
            f"speed{chk_s}) | {cv('int8-full')} | {cv('int8-qop')} | {fmt_s} -> {fmt.get('chosen', '-')} |"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=16, help="calibration/check feeds per model")
    ap.add_argument("--bench-seconds", type=float, default=6.0, help="interleaved latency time per model, s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the optimised models here")
    ap.add_argument("--device", default="host", help="device profile for the energy estimate")
    ap.add_argument("--min-cosine", type=float, default=None, help="tolerance (default: optimize's, 0.995)")
    ap.add_argument("--prefer", default="balanced", choices=("balanced", "size", "speed"))
    ap.add_argument("--ablation", action="store_true",
                    help="also time int8-qdq with its choices undone, and run each model once more without "
                         "the graph rewrites (folding, fusion): prints the ablation table")
    ap.add_argument("--json", type=Path, default=None, help="write every result here")
    args = ap.parse_args(argv)
    rows, abl, results = [], [], {}
    err = Console(stderr=True, width=160)  # the full per-model report; the summary table goes to stdout
    tol = {} if args.min_cosine is None else {"tol": Tolerance(args.min_cosine), "tol_given": True}
    with tempfile.TemporaryDirectory() as td:
        for i, src in enumerate(args.models):
            pkg = PRESETS.get(src.name, ("?", None))[0]
            calib: Path | None = Path(td) / f"{i}.npz"
            if not write_inputs(src, calib, args.samples, seed=i):  # type: ignore[arg-type]
                calib = None
            out = (args.out_dir or Path(td)) / f"{src.stem}.opt.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"== {src} ({pkg})", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            base = dict(model=src, out=out, calib=calib, samples=args.samples, bench_seconds=args.bench_seconds,
                        threads=args.threads, device=args.device, prefer=args.prefer, **tol)
            res = optimize_onnx(OptimizeConfig(**base, ablation=args.ablation))
            res["seconds"] = time.perf_counter() - t0
            print_report(res, err)
            nofold = None
            if args.ablation:
                print(f"== {src} without graph rewrites", file=sys.stderr, flush=True)
                nofold = optimize_onnx(OptimizeConfig(**{**base, "out": Path(td) / "nofold.onnx"}, rewrites=False,
                                                 int8=Int8Options(fold=False)))
                abl += ablation_rows(src.name, res, nofold)
            results[src.name] = {"result": res, "no_rewrites": nofold}
            a, b = res["side_by_side"]["original"], res["side_by_side"]["optimised"]
            ch = _cand(res, res["chosen"])
            tried = " ".join(f"{c['name']}:{c['status'].split(':')[0]}" for c in res["candidates"] if not
                             c["name"] in ABLATION)
            rows.append((src.name, pkg, a["size_bytes"], b["size_bytes"], a["latency"]["latency_ms_p50"],
                         b["latency"]["latency_ms_p50"], res["chosen"], ch.get("cosine"), ch.get("max_abs_err"),
                         ch.get("top1_agreement"), tried, res["seconds"]))
    print("| model (package) | size KiB orig -> opt | x smaller | p50 ms orig -> opt | speed-up | chosen | "
          "worst-output cosine | max abs err | top-1 agr. | candidates (status) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ups = []
    for r in rows:
        up = r[4] / r[5]
        ups.append(up)
        print(f"| {r[0]} ({r[1]}) | {r[2] / 1024:,.0f} -> {r[3] / 1024:,.0f} | {r[2] / r[3]:.2f} | "
              f"{r[4]:.3f} -> {r[5]:.3f} | {up:.2f}x | {r[6]} | {_fmt(r[7], '.5f')} | {_fmt(r[8], '.3g')} | "
              f"{_fmt(r[9], '.3f')} | {r[10]} | {r[11]:.0f} |")
    geo = float(np.exp(np.mean(np.log(ups))))
    print(f"\ngeometric-mean speed-up {geo:.3f}x over {len(ups)} models; min speed-up {min(ups):.2f}x; "
          f"min size ratio {min(r[2] / r[3] for r in rows):.2f}x; min worst-output cosine "
          f"{min((r[7] for r in rows if r[7] is not None), default=float('nan')):.4f}")
    if abl:
        print("\n| model | graph rewrites: on vs off (chosen) | CLE (full-INT8 cosine) | bias correction | "
              "calibration (full-INT8 cosine per method) | AdaRound | int8-qdq speed-up / cosine | "
              "no fidelity fallback | no speed choice | every layer INT8 | QOperator | integer formats "
              "(full INT8 vs FP32) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(abl))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
