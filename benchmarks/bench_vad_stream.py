"""Streaming fidelity of a compressed voice-activity detector (issue 23): `edgeslim run RECIPE --model VAD.onnx
--inputs X.npz` on a silero VAD from the registry wheel, judged over streams with the state carried.

Inputs: speech-like synthetic audio (a glottal pulse train through vowel formants, 4 syllables a second,
1.8 s of talk then 1.2 s of pause, a little noise; 16 kHz), cut into 512-sample chunks each preceded by the
64 samples before it (576 samples: what the silero wrapper feeds its v5 models), state zeros, sr 16000. Not
real speech (no speech corpus offline); the original model calls about 64% of the chunks speech. Prints per
stage: file size, speed-up over the original (ONNX Runtime, batch 1, one thread, interleaved at the end of the
run), held-out fidelity over the streams (cosine of the score and of the state, fraction of the decisions
score > 0.5 that changed), and two one-step figures of the same held-out chunks: from the state the original
carried (what the run records as `fidelity_one_step`) and from a zero state every step (a one-step check a
user might run), each as the fraction of changed decisions.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_vad_stream.py \\
        /work/thirdparty/models/silero_vad/data/silero_vad_16k_op15.onnx --recipe int8.yaml --out runs/vad
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def speechlike(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Speech-like audio (module docstring), float32 at `sr`."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 125 + 25 * np.sin(2 * np.pi * 0.7 * t) + 8 * rng.standard_normal(n).cumsum() / np.sqrt(n)
    src = (np.cumsum(f0 / sr) % 1.0) - 0.5  # sawtooth glottal source
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    out, seg, r = np.zeros(n), int(0.15 * sr), np.exp(-np.pi * 90 / sr)
    for i in range(0, n, seg):
        y = src[i:i + seg]
        for fc in vowels[rng.integers(len(vowels))]:
            y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], y)
        out[i:i + seg] = y
    syl = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) ** 1.5
    talk = ((t % 3.0) < 1.8).astype(float)
    return (out / (np.abs(out).max() + 1e-9) * syl * talk * 0.5 + 0.005 * rng.standard_normal(n)).astype(np.float32)


def write_inputs(path: Path, n: int, model: Path, seed: int = 0) -> None:
    """`n` chunks of 64 + 512 samples as consecutive stream steps for `model`'s first input, its other float
    inputs (the recurrent state: `state`, or `h` and `c`) zeros of their declared shape (a named dim as 1), and an
    integer `sr` input 16000."""
    import onnx

    a = speechlike(n * 512 / 16000 + 0.01, seed)
    a = np.concatenate([np.zeros(64, np.float32), a])
    x = np.stack([a[i * 512:i * 512 + 576] for i in range(n)])
    g = onnx.load(str(model), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    arrays = {inputs[0].name: x}
    for i in inputs[1:]:
        t = i.type.tensor_type
        if t.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            arrays[i.name] = np.array(16000, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        else:
            arrays[i.name] = np.zeros([d.dim_value or 1 for d in t.shape.dim], np.float32)
    np.savez(path, **arrays)


def one_step_changed(ref: Path, got: Path, rows: np.ndarray, layout, zero_state: bool) -> float:
    """Fraction of held-out steps whose decision changed, each step run alone (state from the row, or zeros)."""
    from edgeslim.run.streams import run_rows

    rows = rows.copy()
    if zero_state:
        off = 0
        for s in layout.packed:
            if s.role == "state":
                rows[:, off:off + s.size] = 0
            off += s.size
    a = np.concatenate([r[0].reshape(-1) for r in run_rows(ref, layout, rows)]) > 0.5  # the score, one per row
    b = np.concatenate([r[0].reshape(-1) for r in run_rows(got, layout, rows)]) > 0.5
    assert len(a) == len(rows)
    return float((a != b).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--recipe", default="edgeslim/recipes/any-model.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/vad"))
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--also", type=Path, nargs="*", default=[],
                    help="other ONNX files with the original's inputs (e.g. `edgeslim optimize` outputs) judged "
                         "on the same held-out streams")
    a = ap.parse_args()
    from edgeslim.pipeline import run_onnx_recipe
    from edgeslim.recipe import find_recipe, load_recipe
    from edgeslim.run.streams import Layout

    a.out.mkdir(parents=True, exist_ok=True)
    x = a.out / "inputs.npz"
    if not x.exists():
        write_inputs(x, a.samples, a.model)
    res = run_onnx_recipe(load_recipe(find_recipe(a.recipe)), a.model, x, a.out / "run", quiet=True)
    run = a.out / "run"
    folder = next(p for p in sorted((run / "stages").iterdir()) if (p / "spec.json").exists())
    spec = json.loads((folder / "spec.json").read_text())
    lay = Layout.from_dict(spec["layout"])
    test = np.load(run / "splits" / "test_packed.npz")["packed"]
    print(f"{a.model.name}: {res['task']['test']} held-out steps in {len(res['streams']['blocks']['test'])} streams")
    print("| stage | size | speed-up | stream cosine (score / state) | decisions changed: stream | one step, "
          "original's state | one step, zero state | wall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in res["stages"]:
        f, per = s["fidelity"], s["fidelity"]["per_output"]
        score, state = lay.outputs[0], lay.outputs[1]  # the score and the (first) state
        onnx_path = run / s["onnx"]
        carried = one_step_changed(a.model, onnx_path, test, lay, zero_state=False)
        zero = one_step_changed(a.model, onnx_path, test, lay, zero_state=True)
        print(f"| {s['name']} | {s['size_bytes']:,} B | {s.get('speedup_vs_baseline') or 1:.2f}x | "
              f"{per[score]['cosine']:.4f} / {per[state]['cosine']:.4f} | {100 * f['decisions_changed']:.2f}% | "
              f"{100 * carried:.2f}% | {100 * zero:.2f}% | {s['seconds']:.0f} s |")
    other_rows(a.model, x, a.also, res["streams"]["blocks"]["test"], lay, test)



def other_rows(model: Path, x: Path, files: list[Path], blocks: list[list[int]], lay, test: np.ndarray) -> None:
    """The table's row for each file of `files` (the original's interface), on the run's held-out streams."""
    import onnx

    from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds
    from edgeslim.run.streams import stream_fidelity

    feeds = load_npz_feeds(x, input_specs(onnx.load(str(model))))
    streams = [[feeds[i] for i in range(a, b)] for a, b in blocks]
    for p in files:
        f = stream_fidelity(model, p, lay, streams, "test")
        per = f["per_output"]
        print(f"| {p.name} | {p.stat().st_size:,} B | - | {per[lay.outputs[0]]['cosine']:.4f} / "
              f"{per[lay.outputs[1]]['cosine']:.4f} | {100 * f['decisions_changed']:.2f}% | "
              f"{100 * one_step_changed(model, p, test, lay, zero_state=False):.2f}% | "
              f"{100 * one_step_changed(model, p, test, lay, zero_state=True):.2f}% | - |")


if __name__ == "__main__":
    main()
