"""Wearable signal monitor: a 1-D CNN classifies short signal windows on a Cortex-M4 wrist device.

MNIST-1D (40-sample generated signals, 10 classes) stands in for an ECG rhythm classifier: the same shape
of problem (a short 1-D window in, a class out) on built-in data. The script trains a 1-D CNN, removes half
its channels (structured pruning) and quantizes it to INT8, then answers the firmware engineer's
questions: does it fit a Cortex-M4 (flash, RAM), what does one inference cost there and how many days
does a coin cell last at one window per second (estimated, calibrated profile)? Finally it exports the
compressed model as a full-integer TFLite model and a C array for TensorFlow Lite Micro.

    python -m examples.wearable_monitor [--tiny] [--out runs/examples/wearable_monitor]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import _common as common

NAME = "wearable_monitor"
REQUIRES = ["ai_edge_litert", "litert_torch", "tflite_micro"]  # the C array for TFLite Micro (edgeslim[litert])
RECIPE = """version: 1
finetune: {epochs: %(ft)d, lr: 0.002}
passes:
  - structured_prune: {ratio: 0.5, importance: l2}
  - quantize_int8: {calibration_samples: 256, method: minmax}
"""


def run(out: Path, tiny: bool = False) -> dict:
    from edgeslim import api
    from edgeslim.fsutil import write_text
    from edgeslim.measure.battery import LifeOptions
    from edgeslim.report.results import human_duration
    from edgeslim.report.summary import print_summary
    from edgeslim.train import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    task = common.task_file("mnist1d", out, tiny)
    width, epochs = (16, 1) if tiny else (64, 20)
    base = common.baseline(out, "cnn1d", task, TrainConfig(epochs=epochs, batch_size=128), tiny,
                           f"a 1-D CNN (width {width}) on {task}", width=width)
    recipe = out / "recipe.yaml"
    write_text(recipe, RECIPE % {"ft": 1 if tiny else 10})
    res = api.run(base, recipe, task, out / "run", quiet=tiny, force=True)
    print_summary(res, out / "run", common.console, "wearable monitor: 1-D CNN on MNIST-1D (ECG stand-in)")

    # firmware: the pruned model as a full-integer INT8 .tflite, its TFLite Micro arena, and a .c/.h pair
    pruned = out / "run" / "stages" / "01_structured_prune"
    tfl = api.export(pruned, "tflite", out / "firmware" / "model.tflite", int8=True, task=task,
                     calibration_samples=64 if tiny else 256)
    c = api.export(Path(tfl["path"]), "c", out / "firmware" / "model_data.c")
    fit = api.check_fit(Path(tfl["path"]), "cortex-m4")
    v = res["stages"][-1]["device_verdict"]
    final = out / "run" / res["stages"][-1]["onnx"]
    lives = {r: api.check_fit(final, "cortex-m4", life=LifeOptions(rate=r))["battery"] for r in ("1/s", "1/min")}
    common.console.print(
        f"firmware: {c['c']} + {Path(c['h']).name} ({tfl['size_bytes']:,} B INT8 model, ops: "
        f"{', '.join(o for o in dict.fromkeys(tfl['ops']) if o != 'DELEGATE')}); TFLite Micro arena {fit['arena_bytes']:,} B "
        f"(recorded by the interpreter); on cortex-m4: {'fits' if fit['fits'] else 'does NOT fit'} "
        f"(flash {fit['flash_bytes']:,} of {fit['flash_available']:,} B, RAM {fit['ram_bytes']:,} of "
        f"{fit['ram_available']:,} B)", highlight=False)
    common.console.print(
        f"battery (estimated, CR2032 225mAh@3V): {human_duration(lives['1/s']['lifetime_s'])} at one window per "
        f"second, {human_duration(lives['1/min']['lifetime_s'])} at one per minute ({v['energy_mj']:.3g} mJ and "
        f"{v['latency_ms']:.3g} ms per inference, {v['energy_method']})", highlight=False)
    return {
        "example": NAME, "tiny": tiny, "task": task, "report": str(out / "run" / "report.html"),
        "stages": common.stage_rows(res["stages"]),
        "tflite": {"path": tfl["path"], "size_bytes": tfl["size_bytes"], "accuracy": tfl.get("accuracy"),
                   "ops": tfl["ops"], "tflm_arena_bytes": fit["arena_bytes"], "fits_cortex_m4": fit["fits"]},
        "c_array": {"c": c["c"], "h": c["h"]},
        "battery_days": {r: life["lifetime_days"] for r, life in lives.items()},
    }


def check(summary: dict) -> None:
    """The shape of this example's results (the tests call it after a tiny run)."""
    s = summary["stages"]
    assert [r["name"] for r in s] == ["baseline", "structured_prune", "quantize_int8"]
    assert s[2]["size_bytes"] < s[1]["size_bytes"] < s[0]["size_bytes"]
    assert s[2]["device_energy_mj"] < s[0]["device_energy_mj"] and s[2]["device_fits"]
    assert summary["battery_days"]["1/min"] > summary["battery_days"]["1/s"] > 0
    assert "aligned(16)" in Path(summary["c_array"]["c"]).read_text()  # TFLite Micro needs a 16-byte aligned model
    assert "MODEL_DATA_ARENA_SIZE" in Path(summary["c_array"]["h"]).read_text()
    assert summary["tflite"]["tflm_arena_bytes"] > 0 and summary["tflite"]["size_bytes"] < s[1]["size_bytes"]


if __name__ == "__main__":
    common.main(run, __doc__ or NAME, NAME, REQUIRES)
