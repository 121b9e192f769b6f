"""Re-time finished `run --inputs` folders on a quiet machine: each run's original model against its last stage,
interleaved in one loop per pair (ONNX Runtime, batch 1, one thread), on the first held-out sample.

The speed-up a run records is timed at the end of that run, on whatever else the machine was doing; this script
times every (original, last stage) pair of several runs again, one pair after the other in one process, so the
ratios of a table come from one quiet session. Each pair has its own loop: timed all together, a 0.1 ms VAD runs
between 20 ms OCR models with its weights evicted from the caches (measured: silero op15 0.48 ms a call instead of
0.11 ms), which is not how it runs. Prints a markdown table: original and last-stage p50 (ms), speed-up, and the
speed-up the run itself recorded.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_final_speed.py RUN_DIR [RUN_DIR ...] [--seconds 20]

RUN_DIR: a run folder (results.json, splits/test.npz; a packed stage reads splits/test_packed.npz).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgeslim.measure.latency import onnx_interleaved


def _feed(path: Path, model: Path) -> dict[str, np.ndarray]:
    """The first sample of each array of the .npz at `path` as `model` takes it: `a[0]` where the samples were
    stacked on a new axis (the array has one more axis than the input), else `a[:1]`; scalars as given."""
    import onnxruntime as ort

    ranks = {i.name: len(i.shape) for i in ort.InferenceSession(str(model)).get_inputs()}
    with np.load(path) as d:
        return {k: d[k] if not d[k].ndim else d[k][0] if d[k].ndim == ranks.get(k, -1) + 1 else d[k][:1]
                for k in d.files}


def pairs(run: Path) -> tuple[str, Path, Path, dict, dict, float | None]:
    """(model name, original file, last stage file, original feed, stage feed, the run's recorded speed-up)."""
    res = json.loads((run / "results.json").read_text())
    last = res["stages"][-1]
    stage = run / last["onnx"]
    split = run / "splits"
    orig_feed = _feed(split / "test.npz", Path(res["model"]))
    packed = split / "test_packed.npz"
    stage_feed = _feed(packed, stage) if packed.exists() else orig_feed
    return Path(res["model"]).name, Path(res["model"]), stage, orig_feed, stage_feed, last.get("speedup_interleaved")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget of each pair's loop (s)")
    a = ap.parse_args(argv)
    lat, recorded = {}, {}
    for run in a.runs:
        name, orig, stage, fo, fs, rec = pairs(run)
        if name in recorded:  # two runs of one model (e.g. a control run beside a new one): both rows, by folder
            name = f"{name} ({run})"
        recorded[name] = rec
        got = onnx_interleaved({"original": orig, "last": stage}, {"original": fo, "last": fs}, threads=1,
                               seconds=a.seconds)
        lat[f"{name}:original"], lat[f"{name}:last"] = got["original"], got["last"]
    print("| model | original p50 | last stage p50 | speed-up | recorded by the run |")
    print("|---|---:|---:|---:|---:|")
    ratios = []
    for name, rec in recorded.items():
        o, s = lat[f"{name}:original"].p50_ms, lat[f"{name}:last"].p50_ms
        ratios.append(o / s)
        print(f"| {name} | {o:.3f} ms | {s:.3f} ms | {o / s:.2f}x | {rec if rec is None else f'{rec:.2f}x'} |")
    print(f"\ngeometric mean speed-up: {float(np.exp(np.mean(np.log(ratios)))):.2f}x over {len(ratios)} models")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
