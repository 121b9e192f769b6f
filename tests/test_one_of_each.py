"""One timing loop, one energy estimator, one fit verdict, one SQNR, one optimisation-level table, one ONNX
accuracy, one place for ONNX Runtime's session options: a source scan keeps them from being copied again."""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "edgeslim"
SOURCES = {p.relative_to(PKG).as_posix(): p.read_text() for p in PKG.rglob("*.py")}


def _where(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {name for name, text in SOURCES.items() if rx.search(text)}


def test_one_timing_loop() -> None:
    # per-call timing (t0 = perf_counter() ... perf_counter() - t0 appended to a list) lives in the one timer
    assert _where(r"\.append\(time\.perf_counter\(\) - t0\)") == {"measure/latency.py"}
    # perf_counter elsewhere is wall time of a whole job (a stage, a trial, an energy window, the INT8 plan's
    # steps in its report, the range search's time budget, the INT8 recovery's wall time), not a timing loop
    assert _where(r"perf_counter\(\)") == {"measure/latency.py", "measure/window.py", "run/loop.py", "distill/matching.py",
                                           "search/study.py", "quant/int8_plan.py", "prune/sensitivity.py",
                                           "quant/range_search.py", "passes/int8_recover.py"}


def test_one_kernel_profiler() -> None:
    # ONNX Runtime's per-kernel profile (the INT8 plan's per-layer speed choice) is read over the one timer's rounds
    assert _where(r"enable_profiling") == {"measure/latency.py"}


def test_one_energy_estimator_one_fit_verdict() -> None:
    assert _where(r"pj_per_mac\(") == {"measure/energy.py", "devices/__init__.py"}
    assert _where(r"runtime_flash_bytes\s*\n?\s*[+]|[+]\s*device\.runtime_flash_bytes|[+] dev\.runtime_flash_bytes") == {
        "measure/device_fit.py"}
    assert _where(r"def device_fit\(") == {"measure/device_fit.py"}


def test_one_sqnr_one_level_table_one_fidelity() -> None:
    assert _where(r"def sqnr") == {"onnxkit/quant.py"}
    assert _where(r"ORT_ENABLE_EXTENDED") == {"onnxkit/ort_options.py"}
    assert _where(r"class Fidelity\b") == {"measure/fidelity.py"}  # outputs vs a reference model


def test_one_stage_loop() -> None:
    # every kind of model (zoo folder, PyTorch program, ONNX file, text encoder) runs through one loop over
    # model handlers (edgeslim.run); the entry points only pick the handler
    assert _where(r'/ "stages" / f"\{i:02d\}_') == {"run/loop.py"}
    assert _where(r"\.fn\(") == {"run/loop.py", "api.py"}  # api.compress applies one pass, no stages


def test_one_onnx_accuracy_one_place_for_session_options() -> None:
    # the accuracy of an ONNX model (fixed batches fed exactly their batch) and ORT's SessionOptions
    assert _where(r"def onnx_accuracy\(") == {"onnxkit/session.py"}
    assert _where(r"SessionOptions\(\)") == {"onnxkit/ort_options.py"}
