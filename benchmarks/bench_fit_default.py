"""`edgeslim fit MODEL --device cortex-m4` with no --rate on every third-party ONNX model: the exit status and
the verdict (a default never fails: a model too slow for 1 inference/s gets "not sustainable" and its highest
sustainable rate). Inputs come from bench_optimize.py's presets (one sample each).

    python benchmarks/bench_fit_default.py [--models-dir /work/thirdparty/models] [--device cortex-m4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimize import write_inputs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=Path("/work/thirdparty/models"))
    ap.add_argument("--device", default="cortex-m4")
    a = ap.parse_args(argv)
    models = sorted(a.models_dir.rglob("*.onnx"))
    print(f"| model | exit | fits {a.device} | est. latency (ms) | energy label | battery at 1/s |")
    print("|---|---|---|---|---|---|")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            npz = Path(tmp) / f"{m.stem}.npz"
            extra = ["--inputs", str(npz)] if write_inputs(m, npz, 1) else []
            p = subprocess.run([sys.executable, "-m", "edgeslim.cli", "fit", str(m), "--device", a.device, *extra,
                                "--json"], capture_output=True, text=True, timeout=600)
            bad += p.returncode != 0
            if p.returncode != 0:
                print(f"| {m.name} | {p.returncode} | - | - | - | {p.stderr.strip()[-120:]} |")
                continue
            r = json.loads(p.stdout)
            b = r.get("battery") or {}
            life = (b["note"] + f" (max {b['max_rate_per_s']:.3g}/s)" if b.get("sustainable") is False else
                    f"{b['lifetime_days']:.4g} days" if b else "-")
            print(f"| {m.name} | 0 | {'yes' if r['fits'] else 'no'} | {r['latency_ms']:.4g} | {r['energy_method']} | "
                  f"{life} |")
    print(f"\n{len(models) - bad} of {len(models)} exit 0")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
