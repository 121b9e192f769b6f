"""Peak RSS of ONNX Runtime inference in the child process of `edgeslim.measure.memory`, with the session
options built in one place (`onnxkit.ort_options.session_options`, as every timed session has them) against a
bare `SessionOptions()` with only the thread counts set (what the child built for itself before). Bytes shown
in MiB; each figure the median of `--repeats` child processes, the two kinds alternating.

    .venv/bin/python benchmarks/bench_rss_session_options.py MODEL.onnx [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from edgeslim.measure import memory

# the child as it was: bare options, threads only (graph optimisation level left unset)
BARE = memory._CHILD.replace(
    """import importlib.util  # the one place session options are built, loaded by path: not the edgeslim package
spec = importlib.util.spec_from_file_location("_edgeslim_ort_options", sys.argv[6])
opts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(opts)
base = peak()
s = ort.InferenceSession(path, opts.session_options(threads), providers=["CPUExecutionProvider"])""",
    """base = peak()
o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1; o.log_severity_level = 3
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])""")


def child(code: str, model: Path, runs: int = 20) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(model), str(runs), "1", "1", "", memory._ORT_OPTIONS],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    assert BARE != memory._CHILD, "the child changed: update BARE"
    rows: dict[str, list[dict]] = {"session_options (now)": [], "bare SessionOptions (before)": []}
    for _ in range(a.repeats):
        rows["session_options (now)"].append(child(memory._CHILD, a.model))
        rows["bare SessionOptions (before)"].append(child(BARE, a.model))
    print(f"{a.model.name}: peak RSS of the child, MiB (median of {a.repeats})")
    print(f"{'options':30} {'after import':>12} {'peak':>8} {'session delta':>14}")
    for k, v in rows.items():
        med = {f: statistics.median(r[f] for r in v) / 2**20 for f in ("base", "after")}
        print(f"{k:30} {med['base']:12.1f} {med['after']:8.1f} {med['after'] - med['base']:14.1f}")


if __name__ == "__main__":
    main()
