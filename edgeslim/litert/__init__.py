"""LiteRT (TensorFlow Lite) and TensorFlow Lite Micro: the second deployment backend.

Everything here needs the optional extra `edgeslim[litert]` (litert-torch, ai-edge-litert, tflite-micro).
The heavy packages are imported lazily inside functions; `require_litert()` turns their absence into one line
that says how to install them.

- `convert`: PyTorch -> FP32 or full-integer INT8 `.tflite` (PT2E quantizer, calibrated on the task),
  with a parity check against the PyTorch (or fake-quant) model;
- `interpreter`: the LiteRT interpreter (XNNPACK on CPU): predictions, accuracy, int8 I/O (de)quantization;
- `micro`: the TFLite Micro interpreter run on the host; its recording allocator gives the exact arena;
- `carray`: the `.c`/`.h` pair for a firmware project;
- `footprint`: a `.tflite`'s bytes, TFLite Micro arena and operators, and its fit on a device profile
  (flash = model + runtime, RAM = arena + runtime);
- `export`: PyTorch -> checked `.tflite` (+ accuracy, arena) and `.tflite` -> C array.
`edgeslim.measure.tflite` measures a `.tflite` for `edgeslim measure`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator

from edgeslim.errors import EdgeslimError

INSTALL_HINT = "LiteRT/TFLite Micro support needs the litert extra: pip install 'edgeslim[litert]'"
MODULES = {"convert": ("litert_torch", "torchao"), "run": ("ai_edge_litert",), "micro": ("tflite_micro",)}

# Quiet the converter's progress lines and TensorFlow's C++ log before anything imports them.
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def missing(*parts: str) -> list[str]:
    """Python modules of the extra that are not installed, for the given parts (all parts by default)."""
    mods = [m for p in (parts or tuple(MODULES)) for m in MODULES[p]]
    return [m for m in mods if importlib.util.find_spec(m) is None]


def litert_available(*parts: str) -> bool:
    return not missing(*parts)


def require_litert(*parts: str) -> None:
    """Raise a one-line `EdgeslimError` with the install command when the extra is absent."""
    gone = missing(*parts)
    if gone:
        raise EdgeslimError(f"{INSTALL_HINT} (missing: {', '.join(gone)})")


def _libc_fflush() -> None:
    import ctypes

    ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_fds() -> Iterator[list[str]]:
    """Redirect the process's stdout/stderr file descriptors (C++ logs) into a buffer.

    Yields a list that holds the captured text once the block ends (TFLite Micro prints its recorded
    allocations this way; the converter and interpreter print INFO lines we keep off the console).
    """
    import sys

    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                _libc_fflush()  # C/C++ stdio buffers, else they reach the real stdout at exit
            except Exception:  # noqa: BLE001 - never lose the real fds over a flush error
                pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


__all__ = ["INSTALL_HINT", "available", "missing", "require", "captured_fds"]
