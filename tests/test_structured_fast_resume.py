"""The packaged `structured-fast` recipe (issue 27), shrunk to a tiny ResNet-8 and a few epochs, killed
(SIGKILL: no handler runs) twice in real `edgeslim run` processes: inside the pass's stage, then after
its stage was written. Each time the same command resumes: finished stages are reused, not redone,
nothing half-written is left, and the run completes with the pass's stage."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from reliability_helpers import finish, listing, signal_on, start

import edgeslim
from edgeslim import api
from edgeslim.train import TrainConfig

RECIPE = Path(edgeslim.__file__).parent / "recipes" / "structured-fast.yaml"
SHRINK = {r"epochs: 30": "epochs: 2", r"screen_epochs: 5": "screen_epochs: 1",
          r"ratios: \[0\.0, 0\.5, 0\.75\]": "ratios: [0.0, 0.5]", r"target_speedup: 2\.2": "target_speedup: 1.3"}


def _small_recipe(path: Path) -> Path:
    text = RECIPE.read_text()
    for pat, new in SHRINK.items():
        text, n = re.subn(pat, new, text)
        assert n == 1, f"{pat} not in {RECIPE}: the test's shrink is stale"
    path.write_text(text.rstrip("\n") + "\n      screen: 2\n      rounds: 5\n")  # few screened, short timing
    return path


def _finished(run: Path) -> list[str]:
    return sorted(n for n in os.listdir(run / "stages") if not n.startswith("."))


def _mtime(run: Path, stage: str) -> int:
    return (run / "stages" / stage / "metrics.json").stat().st_mtime_ns


def test_structured_fast_resumes_after_sigkill(tmp_path: Path) -> None:
    model = tmp_path / "model"
    api.train("resnet8", "digits", model, TrainConfig(epochs=2), quiet=True, width=8)
    out = tmp_path / "run"
    args = ["run", str(_small_recipe(tmp_path / "sf.yaml")), "-m", str(model), "-t", "digits", "-o", str(out)]

    # 1. killed inside the pass's stage (the pause hook holds the child there until the signal lands)
    rc, stdout, _ = signal_on(start(*args, pause_on="[structured_fast] running"), "[structured_fast] running",
                              signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert _finished(out) == ["00_baseline"]  # no half stage (what the kill left is a hidden temp folder)
    baseline_written = _mtime(out, "00_baseline")

    # 2. the same command resumes from the baseline; killed once the pass's stage is written
    rc, stdout, _ = signal_on(start(*args, pause_on="[structured_fast] accuracy"), "[structured_fast] accuracy",
                              signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert "[baseline] done earlier" in stdout and "[structured_fast] running" in stdout
    assert _mtime(out, "00_baseline") == baseline_written  # reused, not redone
    assert _finished(out) == ["00_baseline", "01_structured_fast"]
    assert not (out / "results.json").exists()
    pass_written = _mtime(out, "01_structured_fast")

    # 3. the same command again: both stages reused, the run completes (end-of-run timing and results)
    res = finish(*args)
    assert "[baseline] done earlier" in res.stdout and "[structured_fast] done earlier" in res.stdout
    assert "[structured_fast] running" not in res.stdout
    assert _mtime(out, "01_structured_fast") == pass_written
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["baseline", "structured_fast"]
    notes = stages[1]["notes"]
    assert notes["chosen"] in {c["candidate"] for c in notes["ladder"]} and len(notes["ladder"]) > 1
    assert stages[1]["params"] < stages[0]["params"] and stages[1]["accuracy"] > 0.5
    assert not [p for p in listing(out) if p.endswith(".tmp") or "candidates" in p]  # the kills' leftovers swept
