"""A stage folder of a run on an ONNX file (spec `"arch": "onnx"`) taken by the commands that take a model folder:
`measure`, `fit`, `arena` and `export --format onnx` work on the stage's model.onnx, with the run's sample shape
standing in for the symbolic dims the file keeps from its source; `--format tflite` is one line. An ONNX-only
stage (no spec.json: `quantize_int8`) is measured as its model.onnx too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from reliability_helpers import assert_user_error, main_inproc
from test_run_inputs import Net

RECIPE = ("version: 1\npasses:\n  - distill_outputs: {train: {epochs: 1, batch_size: 32}}\n"
          "  - quantize_int8: {per_layer: false, select: fixed}\n")


def test_commands_take_a_stage_folder_of_an_onnx_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "net.onnx"  # height and width symbolic, as in many exported vision models
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 12, 12),), str(src), input_names=["image"],
                      output_names=["probs"], dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "probs": {0: "n"}},
                      dynamo=False, opset_version=17)
    np.savez(tmp_path / "x.npz", image=np.random.default_rng(0).normal(size=(60, 3, 12, 12)).astype(np.float32))
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "run"
    code, _, err = main_inproc("run", str(tmp_path / "r.yaml"), "--model", str(src), "--inputs",
                               str(tmp_path / "x.npz"), "-o", str(out))
    assert code == 0, err
    stage = out / "stages" / "01_distill_outputs"
    assert json.loads((stage / "spec.json").read_text())["arch"] == "onnx"
    code, stdout, err = main_inproc("measure", str(stage), "--runs", "3", "--json")
    assert code == 0, err
    row = json.loads(stdout)[0]
    assert row["latency_ms_p50"] > 0 and row["inputs"] == {"image": "float32[1, 3, 12, 12]"}
    assert row["size_bytes"] == (stage / "model.onnx").stat().st_size
    for args in (["fit", str(stage)], ["arena", str(stage)]):
        code, _, err = main_inproc(*args)
        assert code == 0, (args, err)
    code, _, err = main_inproc("export", str(stage), "--format", "onnx", "-o", str(tmp_path / "e.onnx"))
    assert code == 0 and (tmp_path / "e.onnx").is_file(), err
    code, _, err = main_inproc("export", str(stage), "--format", "tflite", "-o", str(tmp_path / "e.tflite"))
    assert_user_error(code, err, "01_distill_outputs", "from PyTorch, not from ONNX", "--format onnx")
    assert not (tmp_path / "e.tflite").exists()
    int8 = out / "stages" / "02_quantize_int8"
    assert not (int8 / "spec.json").exists()
    code, stdout, err = main_inproc("measure", str(int8), "--shape", "image=1,3,12,12", "--runs", "3", "--json")
    assert code == 0, err
    assert json.loads(stdout)[0]["size_bytes"] == (int8 / "model.onnx").stat().st_size
