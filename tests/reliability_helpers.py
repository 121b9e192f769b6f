"""Shared helpers of the reliability tests (no tests here): run the CLI in this process, check that an
error is one line, list what a folder holds."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


PAUSE_HOOK = Path(__file__).resolve().parent / "pause_hook"


def start(*args: str, pause_on: str | None = None) -> subprocess.Popen:
    """`edgeslim ARGS` in a child process. With `pause_on`, the child sleeps 30 s right after it prints a
    line holding that text (tests/pause_hook), so a signal sent on that line cannot miss the stage."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if pause_on:
        env["EDGESLIM_TEST_PAUSE_ON"] = pause_on
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PAUSE_HOOK), env.get("PYTHONPATH")]))
    # default SIGINT/SIGTERM in the child even when the tests run as a background job (whose children
    # inherit "ignore SIGINT", which edgeslim then rightly keeps)
    return subprocess.Popen([sys.executable, "-m", "edgeslim.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_signals)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signal_on(p: subprocess.Popen, needle: str | Callable[[str], bool], sig: int, timeout: float = 300,
              wait: bool = True) -> tuple[int, str, str]:
    """Read the process's output until a line holds `needle`, send `sig`, wait for the end unless not
    `wait`. Returns (rc, stdout, stderr); rc and stderr are 0 and "" when not waiting."""
    seen = []
    deadline = time.time() + timeout
    assert p.stdout is not None
    for line in p.stdout:
        seen.append(line)
        if (needle(line) if callable(needle) else needle in line):
            p.send_signal(sig)
            break
        assert time.time() < deadline, "".join(seen)
    else:
        raise AssertionError(f"'{needle}' never appeared:\n{''.join(seen)}\n{p.stderr.read() if p.stderr else ''}")
    if not wait:
        return 0, "".join(seen), ""
    out, err = p.communicate(timeout=timeout)
    return p.returncode, "".join(seen) + out, err


def finish(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = start(*args)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{args} exited {p.returncode}:\n{out}\n{err}"
    return subprocess.CompletedProcess(args, 0, out, err)


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
