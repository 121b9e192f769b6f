"""benchmarks/peers.py --quick --jobs bayes-lenet300: the bayesian-compression recipe beside
torch.nn.utils.prune on the same baseline; every row measured on the same encodings (subprocess: the
benchmark is a script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"


def test_bayes_job_beside_torch_prune(tmp_path: Path) -> None:
    out = tmp_path / "peers"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), "--jobs", "bayes-lenet300",
                           "--bench-seconds", "0.2"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((out / "peers.json").read_text())["jobs"][0]
    rows = {r["tool"]: r for r in job["rows"]}
    es = rows["edgeslim run recipes/bayesian-compression.yaml"]
    assert es["reason"] is None and Path(es["stored"]).name == "model.eshare"
    assert es["size_bytes"] == Path(es["stored"]).stat().st_size < es["onnx_bytes"] / 4  # the .eshare, not the ONNX
    peers = [r for r in job["rows"] if r["kind"] == "peer"]
    assert any(r["tool"].startswith("torch.nn.utils.prune global L1 90.00%") for r in peers)
    for r in [es, *peers]:
        assert r["reason"] is None, (r["tool"], r["reason"])
        assert 0 <= r["quality"] <= 1 and 0 < r["onnx_gzip_bytes"] < r["onnx_bytes"] and r["p50_ms"] > 0
    gz = [r for r in peers if r["tool"].endswith("gzip -9")]
    assert gz and all(abs(r["size_bytes"] - r["onnx_gzip_bytes"]) < 32 for r in gz)  # stored: its ONNX, gzip -9
    assert job["verdict"]
