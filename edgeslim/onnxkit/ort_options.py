"""ONNX Runtime session options, built in one place: every session edgeslim opens (measurement, accuracy,
offline optimisation, kernel profiles, the peak-RSS child process of `measure.memory`) takes its options from
`session_options`. Imports nothing at load time (ONNX Runtime when called, `errors` only to refuse a level), so
the child process loads this one file by path, not the edgeslim package, and its peak RSS stays the runtime's."""

from __future__ import annotations

from typing import Any

# ONNX Runtime graph optimisation levels by the names edgeslim's options use, from the most portable.
LEVELS = ("disable", "basic", "extended", "all")


def ort_level(level: str) -> Any:  # -> ort.GraphOptimizationLevel
    """ONNX Runtime's optimisation level called `level` (one of LEVELS); anything else is one line."""
    import onnxruntime as ort

    table = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in table:
        from edgeslim.errors import EdgeslimError, choices

        raise EdgeslimError(f"unknown optimisation level '{level}'; valid: {choices(LEVELS)}")
    return table[level]


def session_options(threads: int = 1, level: str = "all") -> Any:  # -> ort.SessionOptions
    """Quiet options with `threads` intra-op threads (one inter-op thread) at optimisation `level`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort_level(level)
    return opts
