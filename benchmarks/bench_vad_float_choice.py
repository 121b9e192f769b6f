"""Which layers a recurrent model's INT8 plan must keep float, and what speed is left (issue 23, silero VAD).

After a `bench_vad_stream.py` run (its `--out` folder), rebuilds the `quantize_int8` stage's plan on the same input
(the stage before it), judged over the validation streams with the state carried (`quant.stream_eval`), and then
scores and times float/INT8 splits of the plan's units: each row is the plan's fully quantized model with the
named units kept float (original weights). Columns: worst-output fidelity over the validation streams (state
carried), the same one step on the calibration feeds (what the plan judged before the fix), and the speed-up over
the FP32 input (ONNX Runtime, batch 1, one thread, every row timed interleaved in one loop, median per-round ratio).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_vad_float_choice.py \\
        /work/thirdparty/models/silero_vad/data/silero_vad_16k_op15.onnx /work/runs/A_vad15
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx


def short(unit: str) -> str:
    """A readable name for a unit (the node name's distinctive part)."""
    for key in ("stft_padding", "stft_Conv", "encoder_0", "encoder_1", "encoder_2", "encoder_3", "LSTM", "decoder_2"):
        if key in unit:
            return key
    return unit.rsplit("/", 1)[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, help="the original ONNX file the run compressed")
    ap.add_argument("out", type=Path, help="the --out folder of bench_vad_stream.py")
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    from edgeslim.measure.decide import ratio
    from edgeslim.measure.latency import interleaved_times
    from edgeslim.onnxkit import quant as oq
    from edgeslim.onnxkit.graph import name_nodes
    from edgeslim.onnxkit.inputs import input_specs
    from edgeslim.onnxkit.scoring import state_columns
    from edgeslim.onnxkit.session import session
    from edgeslim.quant import int8_plan
    from edgeslim.quant.layer_select import WEIGHT_CODES_MIN
    from edgeslim.quant.qdq_float import keep_float
    from edgeslim.quant.stream_eval import StreamData, stream_evaluator
    from edgeslim.run.onnx_layout import layout_task

    run = a.out / "run"
    task, lay, _ = layout_task(a.model, a.out / "inputs.npz", input_specs(onnx.load(str(a.model))), 0, 1)
    prev = sorted(p for p in (run / "stages").iterdir() if p.name.split("_", 1)[1] != "quantize_int8")[-1]
    tmp = Path(tempfile.mkdtemp(prefix="vadfc-"))
    pre = tmp / "pre.onnx"
    oq.preprocess(prev / "model.onnx", pre)
    model = onnx.load(str(pre))
    name_nodes(model)
    feeds = oq.calibration_feeds(pre, task.calibration(256, 0))
    fp = session(model.SerializeToString())
    ref = [fp.run(None, f) for f in feeds]
    data = StreamData(task.x_val, task.y_val, state_columns(lay.as_dict()))
    opts = int8_plan.Int8Options(formats=("u8s8-pc",), speed_choice=False, target_cosine=0.99)
    plan = int8_plan.build_plan(model, feeds, ref, opts, clock=None, streams=data)  # type: ignore[arg-type]
    assert plan.full is not None
    us = plan.units
    stream, one = stream_evaluator(model, data), int8_plan.evaluator(feeds, ref)
    base = [u for u in us.quant if short(u) in ("stft_Conv", "LSTM", "stft_padding", "decoder_2")]
    free = [u for u in us.quant if u not in base]
    rows: dict[str, tuple[onnx.ModelProto, float, float]] = {}
    for k in range(len(free) + 1):
        for extra in itertools.combinations(free, k):
            fl = us.nodes([*base, *extra])
            m = keep_float(plan.full, fl, exact=fl, float_model=plan.float_model, int8_min_elements=WEIGHT_CODES_MIN)
            int8 = [short(u) for u in us.quant if u not in base and u not in extra]
            rows["INT8: " + (", ".join(int8) or "none")] = (m, stream(m, 1), one(m, len(feeds)))
    rows["the plan: INT8 " + ", ".join(short(u) for u in plan.int8_units)] = (plan.model, stream(plan.model, 1),
                                                                             one(plan.model, len(feeds)))
    x1 = task.x_test[:1].astype(np.float32)
    name = model.graph.input[0].name
    sess = {"fp32": session(pre)} | {k: session(m.SerializeToString()) for k, (m, _, _) in rows.items()}
    times = interleaved_times(sess, dict.fromkeys(sess, {name: x1}), seconds=a.seconds)
    print(f"plan: float {', '.join(f'{short(u)} ({w})' for u, w in plan.float_units.items())}")
    print("| units INT8 (rest float) | val stream fidelity | one-step fidelity (calibration) | speed-up vs FP32 |")
    print("|---|---:|---:|---:|")
    for k, (_, s, o) in sorted(rows.items(), key=lambda kv: -ratio(times[kv[0]], times["fp32"]).speedup):
        print(f"| {k} | {s:.4f} | {o:.4f} | {ratio(times[k], times['fp32']).speedup:.2f}x |")


if __name__ == "__main__":
    main()
