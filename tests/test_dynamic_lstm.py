"""`quant.dynamic_lstm`: LSTMs as ONNX Runtime's DynamicQuantizeLSTM (int8 W/R compute), and the INT8 pick trying
each INT8 candidate with it beside the one without."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import main_inproc
from torch import nn

from edgeslim.onnxkit.session import session
from edgeslim.quant.dynamic_lstm import dynamic_lstm


class Tagger(nn.Module):
    """[N, 8, 20] -> conv -> LSTM (bidirectional, 32 units) -> per-step scores [N, 20, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(torch.relu(self.conv(x)).transpose(1, 2))
        return torch.softmax(self.head(y), -1)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("lstm") / "tagger.onnx"
    torch.onnx.export(Tagger().eval(), (torch.zeros(1, 8, 20),), str(p), input_names=["x"], output_names=["scores"],
                      dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}}, dynamo=False, opset_version=17)
    return p


def test_lstm_becomes_dynamic_int8_with_close_outputs(tagger, tmp_path):
    dst = tmp_path / "q.onnx"
    assert dynamic_lstm(tagger, dst) == 1
    import onnx

    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    x = np.random.default_rng(0).normal(size=(4, 8, 20)).astype(np.float32)
    want = session(tagger.read_bytes()).run(None, {"x": x})[0]
    got = session(dst.read_bytes()).run(None, {"x": x})[0]
    assert np.abs(want - got).max() < 0.05 and (want.argmax(-1) == got.argmax(-1)).mean() > 0.9
    assert dst.stat().st_size < 0.6 * tagger.stat().st_size  # int8 W and R


def test_nothing_to_rewrite_writes_nothing(tmp_path):
    p, dst = tmp_path / "lin.onnx", tmp_path / "q.onnx"
    torch.onnx.export(nn.Linear(4, 3).eval(), (torch.zeros(1, 4),), str(p), input_names=["x"], dynamo=False)
    assert dynamic_lstm(p, dst) == 0 and not dst.exists()


def test_the_int8_pick_tries_each_candidate_with_int8_lstm(tagger, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - quantize_int8: {}\n")
    x = np.random.default_rng(1).normal(size=(120, 8, 20)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(recipe), "--model", str(tagger), "--inputs", str(tmp_path / "x.npz"),
                               "-o", str(out))
    assert code == 0, err
    int8 = json.loads((out / "results.json").read_text())["stages"][-1]
    tried = {t["candidate"]: t for t in int8["notes"]["tried"]}
    assert {"int8-mixed", "int8-mixed+lstm8", "int8-full", "int8-full+lstm8"} <= set(tried)
    chosen = int8["notes"]["format"].split(" ")[0]
    assert chosen in tried and ("won" in tried[chosen]["why"] or "written although slower" in tried[chosen]["why"])
    assert ("recurrent_int8" in int8["notes"]) == chosen.endswith("+lstm8")
    assert int8["fidelity"]["cosine"] > 0.98
