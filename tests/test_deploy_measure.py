"""`edgeslim measure` with deploy figures, and the deploy fields the pipeline adds to every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from edgeslim.deploy.export import export_onnx
from edgeslim.models import build_model, make_spec
from edgeslim.run.stage_metrics import measure_stage


def _onnx(tmp_path, task):
    import torch

    torch.manual_seed(0)
    net = build_model(make_spec("lenet5", task.input_shape, task.num_classes))
    path = tmp_path / "m.onnx"
    export_onnx(net, task.input_shape, path)
    return net, path


def test_stage_gets_deploy_fields(tmp_path, tiny_image_task):
    net, path = _onnx(tmp_path, tiny_image_task)
    m = measure_stage(path, tiny_image_task, net, latency_runs=20)
    for k in ("arena_bytes", "naive_activation_bytes", "flash_bytes", "energy_mj", "energy_method"):
        assert k in m, k
    assert 0 < m["arena_bytes"] <= m["naive_activation_bytes"]
    assert m["energy_mj"] > 0
    assert m["energy_method"].startswith(("estimated:calibrated@", "estimated:uncalibrated@", "measured:"))


def test_measure_cli_side_by_side(tmp_path, tiny_image_task):
    _, path = _onnx(tmp_path, tiny_image_task)
    # a "compressed" copy: INT8 QDQ through ONNX Runtime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": tiny_image_task.x_train[i : i + 1]} for i in range(8)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(path), str(q), Reader(), quant_format=QuantFormat.QDQ)
    save = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "edgeslim.cli", "measure", str(path), str(q), "--device", "cortex-m4",
                        "--runs", "20", "--batch", "4", "--save", str(save)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for label in ("activation arena", "flash needed (cortex-m4)", "energy / inference",
                  "estimated:calibrated@cortex-m4", "ORT latency p50", "ORT batch 4 p50"):
        assert label in r.stdout, label
    rows = json.loads(save.read_text())
    base, quant = rows
    assert quant["arena_bytes"] < base["arena_bytes"]  # int8 activations
    assert quant["weights_bytes"] < base["weights_bytes"] / 2
    assert quant["macs_by_precision"].get("int8", 0) > 0 and "int8" not in base["macs_by_precision"]
    assert quant["energy_mj"] < base["energy_mj"]
    assert base["fits"] and base["inference_peak_rss_bytes"] > 10 * 2**20
    assert np.isfinite(base["latency_b4_ms_p50"])
