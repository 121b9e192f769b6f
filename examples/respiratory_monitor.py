"""Respiratory-style monitor: a transformer teacher distilled into a small GRU student, then QAT to INT8.

A wearable breathing monitor classifies short windows of a 1-D signal. MNIST-1D (40-sample generated
signals, 10 classes, built in) stands in for the respiratory windows: the same shape of problem (a short
1-D window in, a class out) with nothing downloaded; it is not respiratory data. The script trains a small
transformer (the accurate model one would build first), distils it into a GRU reading 4 samples a step
(logit KD plus generated MNIST-1D signals the teacher labels: `recipes/seq-distill-gru.yaml` with fewer
epochs and a smaller transfer set so it takes minutes), then quantization-aware training to INT8. It
prints the measured table, the Cortex-M4 verdict and the teacher's vs the student's energy per inference
and battery life there (estimated, calibrated profile).

    python -m examples.respiratory_monitor [--tiny] [--out runs/examples/respiratory_monitor]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import _common as common

NAME = "respiratory_monitor"
DEVICE = "cortex-m4"
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "seq-distill-gru.yaml"
RATES = ("1/s", "1/min")
# full mode: (teacher epochs, student hidden, distill epochs, transfer signals, QAT epochs); the shipped
# recipe uses 100 teacher / 100 distill epochs and 60,000 signals (docs/benchmarks.md: 10-30 min on this VM)
FULL = {"teacher_epochs": 30, "hidden": 48, "distill_epochs": 60, "transfer": 60000, "qat_epochs": 3}
TINY = {"teacher_epochs": 1, "hidden": 8, "distill_epochs": 1, "transfer": 400, "qat_epochs": 1}


def recipe_text(cfg: dict, transfer: str) -> str:
    """The shipped recipe with this run's epochs, student size and transfer set (YAML)."""
    import yaml

    r = yaml.safe_load(RECIPE.read_text())
    r["finetune"] = {**r.get("finetune", {}), "epochs": cfg["qat_epochs"]}
    for step in r["passes"]:
        d = step.get("distill")
        if d is not None:
            d["student"] = {**d["student"], "hidden": cfg["hidden"]}
            d["train"] = {**d.get("train", {}), "epochs": cfg["distill_epochs"]}
            d["transfer"] = transfer
    return yaml.safe_dump(r, sort_keys=False)


def tiny_transfer(out: Path, n: int) -> str:
    """Tiny runs train on an .npz copy (no generator behind it): the transfer set is then an .npz of
    MNIST-1D training signals the tiny copy does not contain (labels dropped)."""
    from edgeslim.data import load_task

    t = load_task("mnist1d")
    x = np.concatenate([t.x_train, t.x_val])[320:320 + n]  # task_file's tiny copy holds the first 320
    path = out / "transfer-tiny.npz"
    np.savez_compressed(path, x=x)  # (N, 1, 40), the built-in layout
    return str(path)


def run(out: Path, tiny: bool = False) -> dict:
    from edgeslim import api
    from edgeslim.fsutil import write_text
    from edgeslim.measure.battery import LifeOptions
    from edgeslim.report.results import human_duration
    from edgeslim.report.summary import print_summary
    from edgeslim.train import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    cfg = TINY if tiny else FULL
    task = common.task_file("mnist1d", out, tiny)
    small = {"dim": 16, "mlp": 32} if tiny else {}
    base = common.baseline(out, "transformer", task, TrainConfig(epochs=cfg["teacher_epochs"], optimizer="adamw",
                                                                 weight_decay=0.05), tiny,
                           f"the transformer teacher (AdamW) on {task}", folder="teacher", **small)
    transfer = tiny_transfer(out, cfg["transfer"]) if tiny else f"generate:{cfg['transfer']}"
    recipe = out / "recipe.yaml"
    write_text(recipe, recipe_text(cfg, transfer))
    common.console.print(f"distilling into a GRU (hidden {cfg['hidden']}, 4 samples a step), {cfg['distill_epochs']} "
                         f"epochs with transfer set {transfer}; then QAT, {cfg['qat_epochs']} epoch(s)", highlight=False)
    res = api.run(base, recipe, task, out / "run", quiet=tiny, force=True)
    print_summary(res, out / "run", common.console, "respiratory-style monitor: transformer teacher -> GRU student, "
                  "MNIST-1D windows")

    # teacher vs student on the device: energy per inference (estimated) and battery life at two rates
    stages = res["stages"]
    onnx = {"teacher": out / "run" / stages[0]["onnx"], "student": out / "run" / stages[-1]["onnx"]}
    fits = {k: {r: api.check_fit(p, DEVICE, life=LifeOptions(rate=r)) for r in RATES} for k, p in onnx.items()}
    t, s = fits["teacher"]["1/s"], fits["student"]["1/s"]
    common.console.print(
        f"teacher vs student on {DEVICE} ({t['energy_method']}): transformer {t['energy_mj']:.3g} mJ and "
        f"{t['latency_ms']:.3g} ms per inference, GRU student ({stages[-1]['name']}) {s['energy_mj']:.3g} mJ and "
        f"{s['latency_ms']:.3g} ms: {t['energy_mj'] / s['energy_mj']:.1f}x less energy per window, accuracy "
        f"{100 * stages[0]['accuracy']:.1f}% -> {100 * stages[-1]['accuracy']:.1f}%", highlight=False)
    for r in RATES:
        bt, bs = fits["teacher"][r]["battery"], fits["student"][r]["battery"]
        common.console.print(f"battery (estimated, {bs['battery']}) at {r}: teacher {human_duration(bt['lifetime_s'])}, "
                             f"student {human_duration(bs['lifetime_s'])}", highlight=False)
    return {
        "example": NAME, "tiny": tiny, "task": task, "device": DEVICE, "settings": cfg, "transfer": transfer,
        "report": str(out / "run" / "report.html"), "stages": common.stage_rows(stages),
        "teacher_vs_student": {
            k: {"energy_mj": f["1/s"]["energy_mj"], "latency_ms": f["1/s"]["latency_ms"], "fits": f["1/s"]["fits"],
                "energy_method": f["1/s"]["energy_method"],
                "battery_days": {r: f[r]["battery"]["lifetime_days"] for r in RATES}}
            for k, f in fits.items()},
        "energy_ratio": round(s["energy_mj"] / t["energy_mj"], 4),
    }


def check(summary: dict) -> None:
    """The shape of this example's results (the tests call it after a tiny run)."""
    s = summary["stages"]
    assert [r["name"] for r in s] == ["baseline", "distill", "qat"]
    assert s[1]["macs"] < s[0]["macs"] and s[2]["size_bytes"] < s[1]["size_bytes"] < s[0]["size_bytes"]
    assert all(r["device_device"] == DEVICE and r["device_energy_mj"] > 0 for r in s)
    tvs = summary["teacher_vs_student"]
    assert tvs["student"]["energy_mj"] < tvs["teacher"]["energy_mj"] and tvs["student"]["fits"]
    assert 0 < summary["energy_ratio"] < 1 and summary["energy_ratio"] == round(
        tvs["student"]["energy_mj"] / tvs["teacher"]["energy_mj"], 4)
    for k in ("teacher", "student"):
        assert tvs[k]["energy_method"].startswith("estimated")
        assert tvs[k]["battery_days"]["1/min"] > tvs[k]["battery_days"]["1/s"] > 0
    assert tvs["student"]["battery_days"]["1/s"] > tvs["teacher"]["battery_days"]["1/s"]


if __name__ == "__main__":
    common.main(run, __doc__ or NAME, NAME)
