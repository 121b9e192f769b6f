"""The bayesian-compression recipe (variational_prune -> posterior_code) killed with SIGKILL by a real
`edgeslim run` process in each of its two passes resumes with the same command and ends with the same
metrics and the same `.eshare` bytes as an uninterrupted run (latency aside)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from reliability_helpers import finish, listing, signal_on, start

from edgeslim import api
from edgeslim.train import TrainConfig

# the shipped recipe's two passes with a tiny budget
RECIPE = """version: 1
finetune: {epochs: 1, lr: 0.001}
passes:
  - variational_prune: {kl_weight: 20.0, finetune: {epochs: 6, lr: 0.01}, masked_finetune: {epochs: 2, lr: 0.001}}
  - posterior_code: {finetune: {epochs: 2, lr: 0.0005}}
"""
SAME = ("name", "accuracy", "params", "nonzero_params", "macs", "size_bytes")  # latency excluded
ESHARE = Path("stages") / "02_posterior_code" / "model.eshare"


def _stages(run: Path) -> list[dict]:
    return [{k: s[k] for k in SAME} | {"notes": _notes(s)}
            for s in json.loads((run / "results.json").read_text())["stages"]]


def _notes(stage: dict) -> dict:
    n = stage.get("notes") or {}
    return {k: n[k] for k in ("weight_sparsity", "bits_per_weight", "dense_fp32_bytes") if k in n}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small LeNet-300-100 (24-12 hidden units) trained on digits, the recipe, one uninterrupted run."""
    root = tmp_path_factory.mktemp("bayes_resume")
    model = root / "model"
    api.train("lenet300", "digits", model, TrainConfig(epochs=3), quiet=True, h1=24, h2=12)
    rec = root / "bayes.yaml"
    rec.write_text(RECIPE)
    ref = root / "reference"
    finish(*_args(model, rec, ref))
    return {"model": model, "recipe": rec, "reference": _stages(ref), "eshare": (ref / ESHARE).read_bytes()}


def _args(model: Path, recipe: Path, out: Path) -> list[str]:
    return ["run", str(recipe), "-m", str(model), "-t", "digits", "-o", str(out)]


@pytest.mark.parametrize("needle, kept", [
    ("[variational_prune] epoch 3/6", ["00_baseline"]),  # in the variational training
    ("[posterior_code", ["00_baseline", "01_variational_prune"]),  # in sharing / centroid fine-tuning
])
def test_sigkill_in_a_pass_then_resume_gives_the_same_file(env: dict, tmp_path: Path, needle: str,
                                                           kept: list[str]) -> None:
    out = tmp_path / "run"
    args = _args(env["model"], env["recipe"], out)
    rc, stdout, _ = signal_on(start(*args, pause_on=needle), needle, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    # finished stages only; the half stage is a hidden temporary (a SIGKILL cannot clean up), swept on resume
    assert sorted(n for n in os.listdir(out / "stages") if not n.startswith(".")) == kept
    assert not (out / "results.json").exists()
    res = finish(*args)  # the kernel dropped the killed process's lock
    assert "[baseline] done earlier" in res.stdout
    if len(kept) > 1:
        assert "[variational_prune] done earlier" in res.stdout  # masks and bits come from its carry
    assert _stages(out) == env["reference"]
    assert (out / ESHARE).read_bytes() == env["eshare"]
    assert not [p for p in listing(out) if p.endswith(".tmp")]  # what the kill left behind was swept
