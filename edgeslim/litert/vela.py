"""Arm Ethos-U NPUs through Arm's own compiler, Vela (`ethos-u-vela`, the `vela` extra).

Vela compiles a full-integer INT8 `.tflite` for an Ethos-U55/U65/U85 configuration and reports what the
compiled network needs: SRAM (the tensor arena it allocates), flash (weights and command stream), the
NPU's cycle count and inference time at the configuration's clock, and which operators it could not map
to the NPU (they fall back to the Cortex-M CPU through TFLite Micro). Those are Vela's estimates (its
performance model), labelled `estimated:vela`: the vendor's number, not ours.

A device profile names the configuration under `vela:` (`accelerator`, `system_config`, `memory_mode`,
`config`: a Vela .ini, default its bundled `Arm/vela.ini`). Vela runs in a subprocess (it prints a lot and
keeps global state); it is never imported by edgeslim itself.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeslim.errors import EdgeslimError

INSTALL_HINT = "Ethos-U estimates need Arm's Vela compiler: pip install 'edgeslim[vela]' (ethos-u-vela)"
DEFAULTS = {"config": "Arm/vela.ini", "system_config": "Ethos_U55_High_End_Embedded", "memory_mode": "Shared_Sram"}
TIMEOUT_S = 300


def vela_available() -> bool:
    return importlib.util.find_spec("ethosu") is not None


def _int8_tflite(path: Path) -> None:
    if path.suffix != ".tflite":
        raise EdgeslimError(f"{path}: Vela compiles full-integer INT8 .tflite files; export one first "
                            f"(edgeslim export MODEL --format tflite --int8 -o model.tflite)")


def compile_vela(tflite: str | Path, vela: dict, out_dir: Path | None = None) -> dict:
    """Run Vela on `tflite` with the profile's `vela` settings. Returns SRAM and flash (bytes), cycles, time
    (ms), NPU/CPU operator counts and the CPU-fallback operators, all labelled `estimated:vela`."""
    path = Path(tflite)
    _int8_tflite(path)
    if not path.is_file():
        raise EdgeslimError(f"{path}: no such .tflite file")
    if not vela_available():
        raise EdgeslimError(INSTALL_HINT)
    cfg = {**DEFAULTS, **(vela or {})}
    if "accelerator" not in cfg:
        raise EdgeslimError("device profile: 'vela' needs 'accelerator' (e.g. ethos-u55-128)")
    with tempfile.TemporaryDirectory() as tmp:
        outd = Path(out_dir) if out_dir is not None else Path(tmp)
        cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())", str(path),
               "--accelerator-config", cfg["accelerator"], "--config", cfg["config"],
               "--system-config", cfg["system_config"], "--memory-mode", cfg["memory_mode"],
               "--output-dir", str(outd), "--show-cpu-operations"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
            r.stdout += r.stderr
        except subprocess.TimeoutExpired:
            raise EdgeslimError(f"{path}: Vela did not finish in {TIMEOUT_S} s") from None
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1][:300]
            raise EdgeslimError(f"{path}: Vela could not compile the model for {cfg['accelerator']}: {last}")
        summaries = sorted(outd.glob("*_summary_*.csv"))
        if not summaries:
            raise EdgeslimError(f"{path}: Vela wrote no summary (output: {r.stdout.strip()[-200:]!r})")
        with open(summaries[0], newline="") as f:
            row = next(csv.DictReader(f))
    return parse_summary(row, r.stdout, cfg)


def parse_summary(row: dict, stdout: str, cfg: dict) -> dict:
    """The figures of Vela's summary CSV row and its console output (`--show-cpu-operations`)."""
    kib = 1024.0
    flash = float(row.get("off_chip_flash_memory_used") or 0) + float(row.get("on_chip_flash_memory_used") or 0)
    # the operator types Vela leaves to the CPU (its warnings name them; `CPU:` lines say "Passthrough")
    cpu_ops = re.findall(r"Warning \(supported operators\) operator: (\w+)", stdout)
    cpu_ops = cpu_ops or [m.group(1).strip() for m in re.finditer(r"^\s*CPU:\s*(.+?)\s*=", stdout, re.M)]
    count = {k: int(m.group(1)) for k in ("CPU", "NPU")
             if (m := re.search(rf"^{k} operators\s*=\s*(\d+)", stdout, re.M))}
    t = float(row["inference_time"])
    return {
        "accelerator": cfg["accelerator"], "system_config": row.get("system_config", cfg["system_config"]),
        "memory_mode": row.get("memory_mode", cfg["memory_mode"]),
        "sram_bytes": int(round(float(row["sram_memory_used"]) * kib)),
        "dram_bytes": int(round(float(row.get("dram_memory_used") or 0) * kib)),
        "flash_bytes": int(round(flash * kib)),
        "cycles": int(float(row["cycles_total"])), "npu_cycles": int(float(row.get("cycles_npu") or 0)),
        "clock_hz": float(row["core_clock"]), "latency_ms": round(1e3 * t, 4),
        "macs": int(float(row.get("nn_macs") or 0)),
        "npu_ops": count.get("NPU"), "cpu_ops": count.get("CPU", len(cpu_ops)), "cpu_fallback": sorted(set(cpu_ops)),
        "source": "estimated:vela",
    }


def vela_for_fit(model: str | Path, vela: dict) -> dict:
    """What `fit`/`measure` show for an Ethos-U profile: Vela's figures, or one line saying what is missing."""
    path = Path(model)
    if path.suffix != ".tflite":
        return {"missing": f"{path}: Vela compiles full-integer INT8 .tflite files; export one first "
                           "(edgeslim export MODEL --format tflite --int8 -o model.tflite)"}
    if not vela_available():
        return {"missing": INSTALL_HINT}
    return compile_vela(path, vela)


__all__ = ["INSTALL_HINT", "compile_vela", "parse_summary", "vela_available", "vela_for_fit"]
