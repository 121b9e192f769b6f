"""`edgeslim search MODEL.onnx --inputs X.npz`: a search without labels (trials scored on validation fidelity,
the pick reported on the held-out split, the same seeded split in every trial)."""

from __future__ import annotations

import json

import numpy as np
import torch
from reliability_helpers import assert_user_error, main_inproc
from torch import nn

from edgeslim.search.inputs import pick_trial, recipe_text, val_score


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))), 1)


def test_search_inputs_three_trials_picks_on_validation_and_reports_held_out(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), str(model), input_names=["image"],
                      output_names=["probs"], dynamic_axes={"image": {0: "n"}, "probs": {0: "n"}}, dynamo=False,
                      opset_version=17)
    np.savez(tmp_path / "x.npz", image=np.random.default_rng(0).normal(size=(100, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "s"
    code, stdout, err = main_inproc("search", str(model), "--inputs", str(tmp_path / "x.npz"), "--trials", "3",
                                    "--proxy-epochs", "1", "--min-cosine", "0.5", "-o", str(out))
    assert code == 0, err
    s = json.loads((out / "search.json").read_text())
    rows = [r for r in s["trials"] if "error" not in r]
    assert len(s["trials"]) == 3 and rows
    splits = set()
    for r in rows:
        assert r["val"]["split"] == "val" and r["test"]["split"] == "test"
        res = json.loads((out / "trials" / f"trial{r['number']:04d}" / "results.json").read_text())
        splits.add(json.dumps(res["task"], sort_keys=True))
        assert r["val_cosine"] == res["stages"][-1]["fidelity_val"]["cosine"]
        assert r["val_score"] == val_score(res["stages"][-1]["fidelity_val"]) <= r["val_cosine"]
    assert len(splits) == 1  # the same seeded split (train/val/held-out) in every trial
    best, _ = pick_trial(s["trials"], "latency", 0.5)
    assert best is not None and s["best"]["trial"] == best["number"]
    assert (out / "best.yaml").read_text() == best["recipe"]
    assert "held-out cosine" in stdout and "picked on validation score" in stdout


def test_pick_judges_a_classifier_on_top1_agreement_too():
    """Close scores can still change decisions: a trial is picked on the lower of cosine and top-1 agreement."""
    flips = {"cosine": 0.995, "top1_agreement": 0.95}
    assert val_score(flips) == 0.95 and val_score({"cosine": 0.99}) == 0.99
    rows = [{"number": 0, "val_cosine": 0.995, "val_score": val_score(flips), "latency_ratio": 0.4, "size_bytes": 5},
            {"number": 1, "val_cosine": 0.99, "val_score": 0.99, "latency_ratio": 0.7, "size_bytes": 9}]
    best, why = pick_trial(rows, "latency", 0.98)
    assert best is not None and best["number"] == 1 and "validation score" in why


def test_pick_uses_validation_only():
    rows = [{"number": 0, "val_cosine": 0.99, "test_cosine": 0.5, "latency_ratio": 0.8, "size_bytes": 10},
            {"number": 1, "val_cosine": 0.97, "test_cosine": 1.0, "latency_ratio": 0.4, "size_bytes": 5},
            {"number": 2, "val_cosine": 0.995, "test_cosine": 0.99, "latency_ratio": 0.6, "size_bytes": 8}]
    assert pick_trial(rows, "latency", 0.98)[0]["number"] == 2   # fastest with val >= 0.98 (test never read)
    assert pick_trial(rows, "size", 0.999)[0]["number"] == 2     # none reaches 0.999: the most faithful on val
    assert "structured_prune: {ratio: 0.3}" in recipe_text(0.3, True, False, 1)
    assert "quantize_int8" not in recipe_text(0.3, True, False, 1)


def test_search_needs_task_or_inputs(tmp_path):
    code, _, err = main_inproc("search", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "s"))
    assert_user_error(code, err, "--task", "--inputs")
