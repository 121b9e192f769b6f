"""benchmarks/peers.py --quick: edgeslim beside the tools a user would pick instead. Runs in a subprocess
(NNCF and torchao patch PyTorch when imported) and checks the table's shape: every job has its reference,
an edgeslim row and peer rows, and every row has measured numbers or says why not."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
JOBS = ("int8-resnet8", "structured-resnet8", "unstructured-lenet300", "minilm")
MEASURED = ("quality", "size_bytes", "onnx_bytes", "onnx_gzip_bytes", "p50_ms", "arena_bytes", "energy_mj")
# peer rows that fail for a reason of the peer's own, named here so that any other failing row fails the test
KNOWN_FAILURES = {"torchao quantize_ Int8DynamicActivationInt8Weight -> ONNX": "exporter"}  # no ONNX export of it
COLUMNS = ("quality", "stored size", "ONNX size", "ONNX gzip size", "p50", "arena", "energy", "tool time")


def test_peers_quick_table(tmp_path: Path):
    out = tmp_path / "peers"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--jobs", ",".join(JOBS),
         "--models-dir", str(tmp_path / "no-thirdparty"), "--bench-seconds", "0.2"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "peers.json").read_text())
    jobs = {j["name"]: j for j in report["jobs"]}
    assert list(jobs) == list(JOBS)
    for name, job in jobs.items():
        kinds = [r["kind"] for r in job["rows"]]
        assert kinds.count("edgeslim") == 1 and "peer" in kinds, name
        if name != "minilm":  # every peer row ran: numbers, or a missing optional package named with its install
            for r in job["rows"]:
                ran = all(r[k] is not None for k in MEASURED)
                known = KNOWN_FAILURES.get(r["tool"])
                assert ran or "pip install" in (r["reason"] or "") or (known and known in (r["reason"] or "")), \
                    (name, r["tool"], r["reason"])
        for r in job["rows"]:
            measured = all(r[k] is not None for k in MEASURED)
            assert measured or (r["reason"] and len(r["reason"]) > 10), (name, r["tool"], r["reason"])
            if measured:
                assert r["reason"] is None and r["size_bytes"] > 1000 and 0 < r["p50_ms"] < 100
                assert 0 < r["onnx_gzip_bytes"] < r["onnx_bytes"]  # the same encodings for every tool
                assert 0.0 <= r["quality"] <= 1.0 and r["arena_bytes"] > 100 and r["energy_mj"] > 1e-6
                assert r["energy_method"].startswith("estimated:")
                if r["kind"] != "reference":
                    assert r["wall_s"] is not None and r["wall_s"] >= 0
        assert job["verdict"]
        if name != "minilm":  # the verdict speaks to every column the table prints
            assert all(c in job["verdict"] for c in COLUMNS), job["verdict"]
    # the accuracy jobs: edgeslim and ONNX Runtime's quantizers are always measured
    for name in JOBS[:3]:
        rows = {r["tool"]: r for r in jobs[name]["rows"]}
        assert all(r["quality"] is not None for r in rows.values() if r["kind"] in ("reference", "edgeslim"))
    int8 = {r["tool"]: r for r in jobs["int8-resnet8"]["rows"]}
    assert int8["ONNX Runtime quantize_static (defaults)"]["quality"] is not None
    assert int8["ONNX Runtime quantize_dynamic (defaults)"]["quality"] is not None
    nncf = int8["NNCF nncf.quantize, ONNX backend (defaults)"]
    if importlib.util.find_spec("nncf") is not None:
        assert nncf["quality"] is not None, nncf["reason"]
    else:
        assert "pip install -e '.[peers]'" in nncf["reason"]
    # pruning: the structured peers fine-tune with the recipe's budget (2 rounds x 1 epoch in quick mode)
    tp = {r["tool"]: r for r in jobs["structured-resnet8"]["rows"]}["Torch-Pruning MagnitudePruner 50% (defaults)"]
    assert "fine-tuned 2 epochs" in tp["note"]
    # the printed table: a header of 18 columns per job, one line per row
    table = proc.stdout
    assert table.count("| tool | accuracy / cosine |") == len(JOBS)
    for job in jobs.values():
        for r in job["rows"]:
            line = next(ln for ln in table.splitlines() if ln.startswith(f"| {r['tool']} |"))
            assert line.count("|") == 19
    minilm = jobs["minilm"]["rows"][0]  # not run in --quick (or pending until issue 14 is on the branch)
    assert minilm["quality"] is None and ("--quick" in minilm["reason"] or "pending" in minilm["reason"])
