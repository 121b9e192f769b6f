"""What every example shares: its command line (`--out`, `--tiny`), a smaller copy of a built-in task for
tiny runs, the closing table and `summary.json`.

An example module defines `run(out: Path, tiny: bool) -> dict` (the summary), `check(summary)` (asserts the
shape of its results; the tests call it after a tiny run) and optionally `REQUIRES` (import names of
extras it needs; without them the example says how to install and exits 0, and its test skips).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeslim.fsutil import write_json

console = Console(width=None if sys.stdout.isatty() else 160)


def task_file(name: str, out: Path, tiny: bool, n_train: int = 320, n_test: int = 160,
              transform: Callable[[np.ndarray], np.ndarray] | None = None) -> str:
    """The task spec to train and run on: the built-in `name` itself, or (tiny, or with a `transform` of
    the inputs) an .npz copy in `out` that any edgeslim command accepts as --task."""
    if not tiny and transform is None:
        return name
    from edgeslim.data import load_task

    t = load_task(name)
    f = transform or (lambda x: x)
    xtr, ytr = np.concatenate([t.x_train, t.x_val]), np.concatenate([t.y_train, t.y_val])
    xte, yte = t.x_test, t.y_test
    if tiny:
        xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
    path = out / f"{name}{'-tiny' if tiny else ''}{'-' + f.__name__ if transform else ''}.npz"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=f(xtr), y_train=ytr, x_test=f(xte), y_test=yte)
    return str(path)


def baseline(out: Path, arch: str, task: str, cfg: Any, tiny: bool, what: str, folder: str = "baseline",
             **model_kwargs: Any) -> Path:
    """The example's trained model in `out`/`folder`: trained once with `cfg` (a TrainConfig), reused by
    later runs of the example."""
    from edgeslim import api

    base = out / folder
    if not (base / "spec.json").exists():
        console.print(f"training {what}, {cfg.epochs} epochs", highlight=False)
        api.train(arch, task, base, cfg, quiet=tiny, **model_kwargs)
    return base


def missing(requires: list[str]) -> list[str]:
    return [m for m in requires if importlib.util.find_spec(m) is None]


def stage_rows(stages: list[dict]) -> list[dict]:
    """The compact per-stage record kept in summary.json (the full one is the run's results.json)."""
    keys = ("name", "accuracy", "size_bytes", "macs", "latency_ms_p50_interleaved", "speedup_interleaved", "ece",
            "flipped")
    rows = []
    for s in stages:
        r = {k: s.get(k) for k in keys}
        v = s.get("device_verdict") or {}
        r.update({f"device_{k}": v.get(k) for k in ("device", "fits", "flash_bytes", "arena_bytes", "latency_ms",
                                                    "energy_mj")})
        r["battery_days"] = (v.get("battery") or {}).get("lifetime_days")
        rows.append(r)
    return rows


def check_common(summary: dict) -> None:
    """The shape every example's summary has (the tests call this before the example's own check)."""
    assert summary["example"] and isinstance(summary["tiny"], bool)
    assert Path(summary["report"]).is_file(), summary["report"]
    assert len(summary["stages"]) >= 2 and summary["stages"][0]["name"] == "baseline"
    for s in summary["stages"]:
        if "cosine" in s:  # a text encoder: fidelity to the original instead of accuracy, all stages timed together
            assert 0.0 < s["cosine"] <= 1.0 + 1e-6 and s["size_bytes"] > 0 and s["latency_ms_p50"] > 0
        else:
            assert 0.0 <= s["accuracy"] <= 1.0 and s["size_bytes"] > 0 and s["latency_ms_p50_interleaved"] > 0


def main(run: Callable[..., dict], doc: str, name: str, requires: list[str] | None = None, extra: str = "litert",
         model_option: bool = False) -> None:
    """The command line of an example: --out, --tiny (and --model FOLDER when `model_option`); an example
    whose `requires` are missing says which extra installs them and stops (skipped)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples") / name, help="output folder")
    ap.add_argument("--tiny", action="store_true", help="a few samples and one epoch: checks the example runs")
    if model_option:
        ap.add_argument("--model", type=Path, default=None, help="the model folder to use")
    a = ap.parse_args()
    gone = missing(requires or [])
    if gone:
        console.print(f"{name}: needs {', '.join(gone)}: pip install -e '.[{extra}]' (skipped)")
        return
    import torch

    torch.set_num_threads(1)  # small models: one thread is as fast, and stays fast on a shared machine
    t0 = time.time()
    summary = run(a.out, a.tiny, a.model) if model_option else run(a.out, a.tiny)
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(a.out / "summary.json", summary)
    console.print(f"{name} done in {summary['seconds']:.0f} s; summary: {a.out / 'summary.json'}", highlight=False)
