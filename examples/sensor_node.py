"""Battery-powered sensor node: search compression settings under a hard energy budget per inference.

A solar or coin-cell sensor node (think acoustic or vibration monitoring) wakes, classifies a short signal
window and sleeps again; what it can afford is a fixed energy per inference. MNIST-1D stands in for the
sensor windows. The script trains a 1-D CNN, then runs edgeslim's hardware-aware search (Optuna over
pruning, quantization and fine-tuning settings) on the calibrated `cortex-m4` profile with a hard budget on
the estimated energy per inference and on the accuracy drop. It prints the Pareto front (accuracy vs
energy), picks the most accurate model within the budget on the validation split (the search's
`best_accuracy`), reports its test accuracy, and says how long a coin cell lasts with it.

    python -m examples.sensor_node [--tiny] [--out runs/examples/sensor_node]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import _common as common

NAME = "sensor_node"
DEVICE = "cortex-m4"
BUDGET_MJ = 0.5  # estimated energy per inference on the device, mJ
RATES = ("1/min", "1/s")


def run(out: Path, tiny: bool = False, budget_mj: float = BUDGET_MJ) -> dict:
    from rich.table import Table

    from edgeslim import api
    from edgeslim.measure.battery import LifeOptions
    from edgeslim.report.results import human_bytes, human_duration
    from edgeslim.report.summary import print_summary
    from edgeslim.train import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    task = common.task_file("mnist1d", out, tiny)
    width, epochs = (16, 1) if tiny else (64, 20)
    base = common.baseline(out, "cnn1d", task, TrainConfig(epochs=epochs, batch_size=128), tiny,
                           f"a 1-D CNN (width {width}) on {task}", width=width)
    budget = budget_mj if not tiny else 0.2 * api.check_fit(base, DEVICE)["energy_mj"]
    common.console.print(f"search on {DEVICE}: energy <= {budget:.3g} mJ per inference (estimated), accuracy drop "
                         f"<= {'50' if tiny else '1'} point(s)")
    job = api.SearchJob(
        model=base, task=task, out=out / "search", device=DEVICE, trials=3 if tiny else 16,
        objectives=("accuracy", "energy"), max_energy=f"{budget:.6g}mJ", max_accuracy_drop=50.0 if tiny else 1.0,
        proxy_epochs=1 if tiny else 2, top=1 if tiny else 4, knobs=("structured", "unstructured", "quantize", "finetune"),
        guided=not tiny, seed=0,
    )
    summary = api.search(job, log=lambda msg, warn: common.console.print(msg, highlight=False) if not tiny or warn
                         else None)
    t = Table(title=f"Pareto front after full fine-tuning (val accuracy picks, test accuracy reported; {DEVICE}, "
              f"estimated energy; budget {budget:.3g} mJ)")
    for c in ("model", "val accuracy", "test accuracy", "flash (file)", "arena", "latency (est.)", "energy (est.)", "within budget"):
        t.add_column(c, justify="left" if c == "model" else "right")
    b = summary["baseline"]["test"]
    bv = summary["baseline"]["val"]
    t.add_row("baseline", f"{100 * bv['accuracy']:.2f}%", f"{100 * b['accuracy']:.2f}%", human_bytes(b["flash_bytes"]), human_bytes(b["arena_bytes"]),
              f"{b['latency_ms']:.3g} ms", f"{b['energy_mj']:.3g} mJ", "no" if b["energy_mj"] > budget else "yes")
    for f in summary["front"]:
        m = f["metrics"]
        t.add_row(f"trial {f['trial']}", f"{100 * f['val_metrics']['accuracy']:.2f}%", f"{100 * m['accuracy']:.2f}%", human_bytes(m["flash_bytes"]),
                  human_bytes(m["arena_bytes"]), f"{m['latency_ms']:.3g} ms", f"{m['energy_mj']:.3g} mJ",
                  "yes" if f["feasible"] else "no: " + ", ".join(k for k, v in f["violations"].items() if v > 0))
    common.console.print(t)
    # the search's pick: the most accurate feasible member on the validation split (never on test)
    pick = summary["best"].get("accuracy")
    chosen = next((f for f in summary["front"] if f["trial"] == pick["trial"]), None) if pick else None
    result = {"example": NAME, "tiny": tiny, "task": task, "device": DEVICE, "budget_mj": budget,
              "search_report": str(out / "search" / "report.html"),
              "front": [{"trial": f["trial"], "accuracy": f["metrics"]["accuracy"],
                         "val_accuracy": f["val_metrics"]["accuracy"],
                         "energy_mj": f["metrics"]["energy_mj"], "feasible": f["feasible"]} for f in summary["front"]],
              "baseline_energy_mj": b["energy_mj"], "chosen": None}
    if chosen is None:
        common.console.print("no front member met the budget after full fine-tuning: relax the budget or search longer")
        first = summary["front"][0]
    else:
        first = chosen
    run_dir = out / "search" / first["run_dir"]
    res = _results(run_dir)
    print_summary(res, run_dir, common.console, f"sensor node: {'chosen' if chosen else 'best'} model "
                  f"(trial {first['trial']}) vs baseline")
    onnx = run_dir / res["stages"][-1]["onnx"]
    lives = {r: api.check_fit(onnx, DEVICE, life=LifeOptions(rate=r))["battery"] for r in RATES}
    if chosen is not None:
        common.console.print(
            f"chosen on validation ({100 * chosen['val_metrics']['accuracy']:.2f}%): trial {chosen['trial']}, "
            f"{100 * chosen['metrics']['accuracy']:.2f}% test accuracy at "
            f"{chosen['metrics']['energy_mj']:.3g} mJ per inference (budget {budget:.3g} mJ, baseline "
            f"{b['energy_mj']:.3g} mJ); recipe: {out / 'search' / summary['best']['accuracy']['file']}",
            highlight=False)
        result["chosen"] = {"trial": chosen["trial"], "accuracy": chosen["metrics"]["accuracy"],
                            "val_accuracy": chosen["val_metrics"]["accuracy"], "picked_on": "val",
                            "energy_mj": chosen["metrics"]["energy_mj"], "run_dir": str(run_dir),
                            "recipe": str(out / "search" / summary["best"]["accuracy"]["file"])}
    for r, life in lives.items():
        common.console.print(f"battery (estimated, {life['battery']}): {human_duration(life['lifetime_s'])} at {r} "
                             f"(inference {100 * life['inference_share']:.0f}% of the average power, the rest "
                             f"{life['rest_mode']})", highlight=False)
    common.console.print(f"search report: {out / 'search' / 'report.html'}", highlight=False)
    result.update(report=str(run_dir / "report.html"), stages=common.stage_rows(res["stages"]),
                  battery_days={r: life["lifetime_days"] for r, life in lives.items()})
    return result


def _results(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "results.json").read_text())


def check(summary: dict) -> None:
    """The shape of this example's results (the tests call it after a tiny run)."""
    assert summary["front"] and all(0 <= f["accuracy"] <= 1 and f["energy_mj"] > 0 for f in summary["front"])
    assert Path(summary["search_report"]).is_file()
    assert summary["budget_mj"] < summary["baseline_energy_mj"]
    if summary["chosen"] is not None:
        assert summary["chosen"]["energy_mj"] <= summary["budget_mj"] and Path(summary["chosen"]["recipe"]).is_file()
        assert summary["chosen"]["picked_on"] == "val"
        feas = [f for f in summary["front"] if f["feasible"]]  # feasible on validation
        assert summary["chosen"]["val_accuracy"] == max(f["val_accuracy"] for f in feas)
    assert summary["battery_days"]["1/min"] > summary["battery_days"]["1/s"] > 0


if __name__ == "__main__":
    common.main(run, __doc__ or NAME, NAME)
