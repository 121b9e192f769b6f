"""Shared helpers of the reliability tests (no tests here): run the CLI in this process, check that an
error is one line, list what a folder holds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from edgeslim.errors import EdgeslimError


def main_inproc(*args: str) -> tuple[int, str, str]:
    """`edgeslim ARGS` through the real `main()` (error handling and exit codes), in this process: fast
    enough to drive fuzzed files through the CLI. Returns (exit code, stdout, stderr)."""
    from edgeslim import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["edgeslim", *args]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def subprocess_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line(err: str) -> str:
    """The single non-empty stderr line (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def assert_user_error(code: int, err: str, *needles: str) -> str:
    assert code == 1, (code, err)
    line = one_line(err)
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, (n, line)
    return line


def assert_one_line_error(e: EdgeslimError, *needles: str) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def listing(folder: Path) -> list[str]:
    """Every path under `folder` (relative, sorted), hidden temporaries included."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
