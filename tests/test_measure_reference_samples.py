"""`measure --reference --json` compares every given sample (batched) and says how many."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    import torch

    from edgeslim.deploy.export import export_onnx
    from edgeslim.models import build_model, make_spec

    d = tmp_path_factory.mktemp("ref")
    torch.manual_seed(0)
    export_onnx(build_model(make_spec("cnn1d", (1, 40), 10, width=8)).eval(), (1, 40), d / "ref.onnx")
    m = onnx.load(str(d / "ref.onnx"))
    t = m.graph.initializer[0]
    w = onnx.numpy_helper.to_array(t)
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w + 0.05 * np.sign(w), t.name))
    onnx.save(m, str(d / "changed.onnx"))
    name = m.graph.input[0].name
    np.savez(d / "x.npz", **{name: np.random.default_rng(0).standard_normal((100, 1, 40)).astype(np.float32)})
    return d / "ref.onnx", d / "changed.onnx", d / "x.npz"


def test_reference_compares_all_samples(pair: tuple[Path, Path, Path]) -> None:
    import onnxruntime as ort

    ref, changed, x = pair
    p = subprocess.run([sys.executable, "-m", "edgeslim.cli", "measure", str(changed), "--reference", str(ref),
                        "--inputs", str(x), "--json", "--quick", "--runs", "5"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    f = json.loads(p.stdout)[0]["fidelity"]
    assert f["samples_compared"] == 100
    # the max error over all 100 samples, one at a time, by hand
    xs = np.load(x)
    name = next(iter(xs.files))
    a, b = ort.InferenceSession(str(ref)), ort.InferenceSession(str(changed))
    err = max(float(np.abs(a.run(None, {name: s[None]})[0] - b.run(None, {name: s[None]})[0]).max()) for s in xs[name])
    assert f["max_abs_err"] == pytest.approx(err, rel=1e-5)
    first8 = max(float(np.abs(a.run(None, {name: s[None]})[0] - b.run(None, {name: s[None]})[0]).max())
                 for s in xs[name][:8])
    assert err > first8  # the old 8-sample check would have under-reported it on this data
