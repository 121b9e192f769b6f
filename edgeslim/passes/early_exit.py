"""`early_exit`: dynamic (input-dependent) pruning by early exits: small classifier heads after intermediate blocks;
at inference an input leaves at the first head whose softmax confidence reaches a threshold, so easy
inputs skip the rest of the network.

The backbone is frozen (the stage's model and its metrics are unchanged); the heads are trained on its
pooled features. Everything in the table is *measured*: each segment and head is its own ONNX model, the
test set is run one input at a time in ONNX Runtime exactly as a device would run it, and per threshold
we report accuracy, the mean MACs actually executed per input and the mean wall-clock latency per input
(ms). The timing is the measurement core's (`ctx.measure`, the one interleaved timer): input by input,
every threshold and the full static model in turn, so machine load hits all alike.

The threshold is **picked on the validation split** (each row's `val_accuracy` / `val_macs_fraction`, the
cascade run over the validation inputs, untimed); the test figures (`accuracy`, MACs, latency) are reported
for every row, and the pick's test figures in the notes, but never decide the pick.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgeslim.data import Task
from edgeslim.deploy.export import export_onnx
from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json, write_text
from edgeslim.measure.core import Measurer
from edgeslim.onnxkit.session import session
from edgeslim.passes.base import ZOO_ONLY, PassConfig, PassResult, RunContext, register
from edgeslim.prune.exits import build_exits

DEFAULT_THRESHOLDS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]


class EarlyExit(PassConfig):
    exits: list[str] | None = None  # module paths after which a head sits; default: ~1/3 and ~2/3 of MACs
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    head_epochs: int = Field(200, ge=1, description="full-batch Adam steps per head")
    lr: float = Field(1e-2, gt=0)


def _softmax_max(z: np.ndarray) -> float:
    e = np.exp(z - z.max())
    return float(e.max() / e.sum())


class _Cascade:
    """One configuration as a runner for the measurement core's timer: each call runs the next test input
    (the full model when `threshold` is None, else the exit cascade) and records its class and exit."""

    def __init__(self, run: Callable[[np.ndarray], tuple[int, int]], xs: np.ndarray):
        self.run, self.xs, self.preds, self.exits = run, xs, [], []  # type: ignore[var-annotated]

    def __call__(self) -> None:
        pred, k = self.run(self.xs[len(self.preds) % len(self.xs)][None])
        self.preds.append(pred)
        self.exits.append(k)


def measure_exits(model: nn.Module, ex: dict, task: Task, thresholds: list[float], folder: Path,
                  measure: Measurer | None = None, full_onnx: Path | None = None) -> dict:
    """Run the test set one input at a time through the full ONNX model and, per threshold, through the
    exit cascade, timed by the measurement core (`measure`, the run's `ctx.measure`): one round per test
    input, every configuration in turn. Accuracy (0-1), MACs per input, latency per input in ms. `full_onnx`:
    the backbone already exported (the previous stage's ONNX in a run), else it is exported here."""
    folder.mkdir(parents=True, exist_ok=True)
    if full_onnx is not None:
        shutil.copyfile(full_onnx, folder / "full.onnx")
    else:
        export_onnx(model, task.input_shape, folder / "full.onnx", check=task.x_test[:32])
    segs, heads = [], []
    for k, seg in enumerate(ex["segments"]):
        export_onnx(seg, ex["shapes"][k], folder / f"segment{k}.onnx")
        segs.append(session(folder / f"segment{k}.onnx"))
        if k < len(ex["heads"]):
            out_shape = tuple(seg(torch.zeros(1, *ex["shapes"][k])).shape[1:])
            export_onnx(ex["heads"][k], out_shape, folder / f"head{k}.onnx")
            heads.append(session(folder / f"head{k}.onnx"))
    full = session(folder / "full.onnx")
    n_exit = len(heads)

    def cascade(x: np.ndarray, thr: float) -> tuple[int, int]:  # (predicted class, exit index)
        for k in range(n_exit):
            x = segs[k].run(None, {"input": x})[0]
            z = heads[k].run(None, {"input": x})[0][0]
            if _softmax_max(z) >= thr:
                return int(z.argmax()), k
        return int(segs[-1].run(None, {"input": x})[0][0].argmax()), n_exit

    def run_full(x: np.ndarray) -> tuple[int, int]:
        return int(full.run(None, {"input": x})[0][0].argmax()), n_exit

    cost = np.cumsum([ex["seg_macs"][k] + (ex["head_macs"][k] if k < n_exit else 0) for k in range(n_exit + 1)])
    full_macs = int(sum(ex["seg_macs"]))
    xv = task.x_val.astype(np.float32)
    val: dict[str, tuple[float, float]] = {}  # threshold -> (accuracy, MACs fraction) on validation, for the pick
    for thr in [None, *thresholds]:
        out = [run_full(xv[i : i + 1]) if thr is None else cascade(xv[i : i + 1], thr) for i in range(len(xv))]
        vk = np.asarray([k for _, k in out], dtype=np.int64)
        vok = np.asarray([p for p, _ in out]) == np.asarray(task.y_val)
        val[str(thr)] = (float(vok.mean()), 1.0 if thr is None else float(cost[vk].mean()) / full_macs)
    xs = task.x_test.astype(np.float32)
    warm = xs[: min(20, len(xs))]
    for i in range(len(warm)):  # warm-up, untimed: every session's first runs
        run_full(warm[i : i + 1])
        cascade(warm[i : i + 1], 0.0)
    configs: list[float | None] = [None, *thresholds]  # None: the full static model
    runners = {str(thr): _Cascade(run_full if thr is None else partial(cascade, thr=thr), xs)
               for thr in configs}
    lat = (measure or Measurer()).time(runners, rounds=len(xs), warmup=0, batch=1)
    rows = []
    for thr in configs:
        r = runners[str(thr)]
        ks = np.asarray(r.exits)
        ok = np.asarray(r.preds) == np.asarray(task.y_test)
        macs = full_macs if thr is None else float(cost[ks].mean())
        rows.append({
            "threshold": "full" if thr is None else thr, "accuracy": float(ok.mean()),
            "val_accuracy": round(val[str(thr)][0], 6), "val_macs_fraction": round(val[str(thr)][1], 4),
            "macs_per_input": round(float(macs)), "macs_fraction": round(float(macs) / full_macs, 4),
            "latency_ms_mean": round(lat[str(thr)].mean_ms, 4), "latency_ms_p50": round(lat[str(thr)].p50_ms, 4),
            "exit_fractions": [round(float((ks == k).mean()), 4) for k in range(n_exit + 1)],
        })
    return {"exits": ex["exits"], "full_macs": full_macs, "test_inputs": len(xs), "val_inputs": len(xv),
            "rows": rows}


def pick_threshold(rows: list[dict], within: float = 0.01) -> dict | None:
    """The cheapest threshold (validation MACs fraction) whose **validation** accuracy is within `within`
    (0-1) of the full model's validation accuracy; None when none is. Test figures are not read."""
    full = rows[0]
    return min((r for r in rows[1:] if r["val_accuracy"] >= full["val_accuracy"] - within),
               key=lambda r: r["val_macs_fraction"], default=None)


def table_markdown(res: dict) -> str:
    lines = [f"# Early exits after {', '.join(res['exits'])} (measured, ONNX Runtime, 1 thread, batch 1, "
             f"{res['test_inputs']} test inputs)", "",
             "The threshold is picked on the validation split (val accuracy); the other columns are the test split.",
             "",
             "| threshold | val accuracy (picks) | test accuracy | MACs/input | MACs vs full | latency/input mean (ms) | "
             "p50 (ms) | exits |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        name = "full model" if r["threshold"] == "full" else f"{r['threshold']:g}"
        va = f"{100 * r['val_accuracy']:.2f}%" if "val_accuracy" in r else "-"
        lines.append(f"| {name} | {va} | {100 * r['accuracy']:.2f}% | {r['macs_per_input']:,} | "
                     f"{100 * r['macs_fraction']:.1f}% | {r['latency_ms_mean']:.4f} | {r['latency_ms_p50']:.4f} | "
                     f"{' / '.join(f'{100 * f:.0f}%' for f in r['exit_fractions'])} |")
    return "\n".join(lines) + "\n"


def early_exit_table(model: nn.Module, task: Task, cfg: EarlyExit, folder: Path, seed: int = 0,
                     measure: Measurer | None = None, full_onnx: Path | None = None) -> dict:
    """Build, train and measure exits (timed by `measure`, the measurement core); write early_exit.json / .md
    and the ONNX pieces into `folder`."""
    if any(not 0 <= t <= 1 for t in cfg.thresholds):
        raise EdgeslimError(f"early_exit: thresholds are softmax confidences in [0, 1], got {cfg.thresholds}")
    ex = build_exits(model, task, cfg.exits, cfg.head_epochs, cfg.lr, seed)
    with tempfile.TemporaryDirectory() as tmp:
        res = measure_exits(model, ex, task, sorted(cfg.thresholds), Path(tmp), measure, full_onnx)
        for p in Path(tmp).glob("*.onnx"):
            (folder / "exits").mkdir(parents=True, exist_ok=True)
            p.replace(folder / "exits" / p.name)
    write_json(folder / "early_exit.json", res)
    write_text(folder / "early_exit.md", table_markdown(res))
    return res


@register("early_exit", EarlyExit, kinds=ZOO_ONLY)
def early_exit(model: nn.Module | None, task: Task, cfg: EarlyExit, ctx: RunContext) -> PassResult:
    """Early-exit heads with confidence thresholds; writes the measured accuracy/MACs/latency table."""
    assert model is not None
    res = early_exit_table(model, task, cfg, ctx.stage_dir, ctx.seed, ctx.measure, ctx.prev_onnx)
    full = res["rows"][0]
    best = pick_threshold(res["rows"])
    notes = {"exits": res["exits"], "table": "early_exit.md", "full_accuracy": full["accuracy"],
             "full_val_accuracy": full["val_accuracy"], "threshold_picked_on": "val", "accuracy_split": "test",
             "full_latency_ms_mean": full["latency_ms_mean"], "backbone": "unchanged (heads in exits/)"}
    if best is not None:
        notes.update(cheapest_threshold_within_1pt=best["threshold"], best_accuracy=best["accuracy"],
                     best_val_accuracy=best["val_accuracy"],
                     best_macs_fraction=best["macs_fraction"], best_latency_ms_mean=best["latency_ms_mean"])
    return PassResult(model, notes=notes)
