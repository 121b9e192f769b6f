"""Process peak resident memory (RSS) of ONNX Runtime inference, measured in a fresh process.

Peak RSS (the high-water mark VmHWM) only grows during a process's life, so the figure for one model
comes from a child Python process that records its peak after importing ONNX Runtime, after creating the
session (its options from `onnxkit/ort_options.py`, loaded by path so the edgeslim package is not imported) and
after running inferences. `inference_peak_rss_bytes` is the last; `session_rss_delta_bytes` is what
loading the model and running it added on top of the interpreter + onnxruntime import. Bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeslim.errors import EdgeslimError

_ORT_OPTIONS = str(Path(__file__).resolve().parents[1] / "onnxkit" / "ort_options.py")  # session options, one place

_CHILD = r"""
import json, resource, sys
import numpy as np
def peak():
    # VmHWM (this address space's high-water mark) rather than ru_maxrss, which Linux carries over
    # from the parent across fork+exec and so reports the parent's peak.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
path, runs, threads, batch, feed_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import onnxruntime as ort
import importlib.util  # the one place session options are built, loaded by path: not the edgeslim package
spec = importlib.util.spec_from_file_location("_edgeslim_ort_options", sys.argv[6])
opts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(opts)
base = peak()
s = ort.InferenceSession(path, opts.session_options(threads), providers=["CPUExecutionProvider"])
loaded = peak()
if feed_file:
    with np.load(feed_file, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
else:
    i = s.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) and d > 0 else 1 for d in i.shape[1:]]
    dtype = np.float16 if "float16" in i.type else np.float32
    feed = {i.name: np.random.default_rng(0).random(shape).astype(dtype)}
for _ in range(runs):
    s.run(None, feed)
print(json.dumps({"base": base, "loaded": loaded, "after": peak()}))
"""


def inference_peak_rss(onnx_path: str | Path, runs: int = 20, threads: int = 1, batch: int = 1,
                       timeout_s: float = 120, feed: dict[str, np.ndarray] | None = None) -> dict:
    """Peak RSS figures (bytes) of a child process running `runs` inferences of `onnx_path` on `feed`
    (every input by name; default: random data for a single-input model at `batch`)."""
    with tempfile.TemporaryDirectory() as tmp:
        feed_file = ""
        if feed is not None:
            feed_file = str(Path(tmp) / "feed.npz")
            np.savez(feed_file, **feed)  # type: ignore[arg-type]
        cmd = [sys.executable, "-c", _CHILD, str(onnx_path), str(runs), str(threads), str(batch), feed_file, _ORT_OPTIONS]
        res = _run_child(cmd, onnx_path, timeout_s)
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "inference_peak_rss_bytes": int(d["after"]),
        "runtime_import_rss_bytes": int(d["base"]),
        "session_rss_delta_bytes": int(d["after"] - d["base"]),
    }


def _run_child(cmd: list[str], onnx_path: str | Path, timeout_s: float) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise EdgeslimError(f"{onnx_path}: peak-RSS measurement timed out after {timeout_s:.0f} s") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise EdgeslimError(f"{onnx_path}: peak-RSS child process failed ({last})")
    return res
