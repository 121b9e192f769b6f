"""Smart camera: MobileNetV1 through pruning, INT8 and graph optimisation, for a Raspberry Pi-class board.

The built-in 8x8 digits, upscaled to 32x32 RGB frames, stand in for a camera's crops (no image download).
A MobileNetV1 (alpha 0.5) is trained on them, half of its channels are removed (structured pruning through
depthwise/pointwise groups, Taylor importance, two rounds with fine-tuning), it is quantized to INT8, and the INT8 graph is optimised offline (ONNX Runtime:
QDQ pairs fused into integer kernels, Conv + activation fusions). Per stage: accuracy and ONNX Runtime
latency measured here, latency and energy estimated on the `cortex-a72` profile (Raspberry Pi 4-class), and
the fusions with what they are worth (timed with the runtime's own optimisations off, interleaved).

    python -m examples.smart_camera [--tiny] [--out runs/examples/smart_camera]
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import _common as common

NAME = "smart_camera"
DEVICE = "cortex-a72"
RECIPE = """version: 1
finetune: {epochs: %(ft)d, lr: 0.002}
passes:
  - structured_prune: {ratio: 0.5, importance: taylor, schedule: cubic, rounds: %(rounds)d}
  - quantize_int8: {calibration_samples: 256, method: minmax}
"""


def frames32(x: np.ndarray) -> np.ndarray:
    """(N, 1, 8, 8) digits -> (N, 3, 32, 32) 'camera frames': 4x nearest upscaling, RGB with per-channel gains."""
    up = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)
    return np.concatenate([up * 0.9, up, up * 0.8], axis=1).astype(np.float32)


@contextmanager
def device(name: str):
    """Stage metrics and the run's verdict use EDGESLIM_DEVICE; set it for this run only."""
    old = os.environ.get("EDGESLIM_DEVICE")
    os.environ["EDGESLIM_DEVICE"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EDGESLIM_DEVICE", None)
        else:
            os.environ["EDGESLIM_DEVICE"] = old


def fusion_worth(original: Path, optimised: Path, sample: np.ndarray, seconds: float) -> dict:
    """p50 (ms) of the graph as exported and as optimised offline, both run with ONNX Runtime's own graph
    optimisations off (so the difference is what the fusions are worth), and of the exported graph with
    them on (what ONNX Runtime does at load time anyway); one interleaved timer."""
    from edgeslim.measure.latency import interleaved_latency
    from edgeslim.onnxkit.session import session

    sess = {"exported, runtime opt. off": session(original, level="disable"),
            "optimised offline, runtime opt. off": session(optimised, level="disable"),
            "exported, runtime opt. on (default)": session(original, level="all")}
    feeds = {k: {s.get_inputs()[0].name: sample} for k, s in sess.items()}
    return {k: round(v.p50_ms, 5) for k, v in interleaved_latency(sess, feeds, seconds=seconds).items()}


def run(out: Path, tiny: bool = False) -> dict:
    from rich.table import Table

    from edgeslim import api
    from edgeslim.fsutil import write_text
    from edgeslim.report.summary import print_summary
    from edgeslim.train import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    task = common.task_file("digits", out, tiny, transform=frames32)
    alpha, epochs = (0.25, 1) if tiny else (0.5, 12)
    base = common.baseline(out, "mobilenetv1", task, TrainConfig(epochs=epochs, batch_size=64), tiny,
                           f"MobileNetV1 (alpha {alpha}) on 32x32 RGB frames", alpha=alpha)
    recipe = out / "recipe.yaml"
    write_text(recipe, RECIPE % {"ft": 1 if tiny else 6, "rounds": 1 if tiny else 2})
    with device(DEVICE):
        res = api.run(base, recipe, task, out / "run", quiet=tiny, force=True)
    print_summary(res, out / "run", common.console, f"smart camera: MobileNetV1 alpha {alpha}, 32x32 frames, "
                  f"{DEVICE} profile")

    # graph optimisation of the deployed (INT8) model: the fusions, and what they are worth here
    last = out / "run" / res["stages"][-1]["onnx"]
    opt = out / "deploy" / "model.opt.onnx"
    comp = api.compile_model(last, opt, "extended")
    sample = np.load(task)["x_test"][:1] if task.endswith(".npz") else None
    if sample is None:
        from edgeslim.data import load_task

        sample = load_task(task).x_test[:1]
    worth = fusion_worth(last, opt, sample.astype(np.float32), 0.5 if tiny else 3.0)
    t = Table(title=f"graph optimisation of {res['stages'][-1]['name']} (ONNX Runtime 'extended', offline): "
              f"{comp['nodes_before']} -> {comp['nodes_after']} nodes", caption="p50 ms, batch 1, 1 thread, interleaved")
    t.add_column("graph")
    t.add_column("latency p50", justify="right")
    for k, v in worth.items():
        t.add_row(k, f"{v:.4f} ms")
    common.console.print(t)
    for f in comp["fusions"]:
        common.console.print(f"  fusion: {f}", highlight=False)
    off = worth["exported, runtime opt. off"] / worth["optimised offline, runtime opt. off"]
    common.console.print(f"the fusions are worth {off:.2f}x here; ONNX Runtime applies them at load time by default, "
                         "so the offline graph matters for runtimes that do not (and loads faster)", highlight=False)
    return {
        "example": NAME, "tiny": tiny, "task": task, "device": DEVICE, "report": str(out / "run" / "report.html"),
        "stages": common.stage_rows(res["stages"]),
        "graph_optimisation": {"path": str(opt), "nodes_before": comp["nodes_before"],
                               "nodes_after": comp["nodes_after"], "fusions": comp["fusions"],
                               "parity_max_abs_diff": comp.get("parity_max_abs_diff"), "latency_ms_p50": worth,
                               "fusion_speedup": round(off, 3)},
    }


def check(summary: dict) -> None:
    """The shape of this example's results (the tests call it after a tiny run)."""
    s = summary["stages"]
    assert [r["name"] for r in s] == ["baseline", "structured_prune", "quantize_int8"]
    assert all(r["device_device"] == DEVICE and r["device_latency_ms"] > 0 for r in s)
    assert s[1]["macs"] < 0.5 * s[0]["macs"] and s[2]["size_bytes"] < s[0]["size_bytes"]
    g = summary["graph_optimisation"]
    assert g["nodes_after"] < g["nodes_before"] and g["fusions"] and Path(g["path"]).is_file()
    assert len(g["latency_ms_p50"]) == 3 and g["fusion_speedup"] > 0


if __name__ == "__main__":
    common.main(run, __doc__ or NAME, NAME)
