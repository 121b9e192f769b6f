"""Ctrl-C and SIGTERM: stop cleanly, say in one line what was interrupted and how to resume.

The CLI installs handlers (`install`) that raise `Interrupted`. It derives from BaseException, so the
`except Exception` blocks that record a failed search trial or fall back to another candidate do not
swallow it, while every `except BaseException: clean up; raise` (atomic writes, temporary stage
folders) still runs. Long jobs wrap their parts in `during(label)`; as the exception passes through, each
level adds its label (innermost first), so the message reads "during distill epoch 3/20, in stage
02_distill of runs/x". The exit status is 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a
shell reports a process the signal killed, so `edgeslim run ... && deploy` stops.

A second signal while the first is being handled gets the default action (the process ends at once):
a cleanup that hangs can still be stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread when the process gets SIGINT or SIGTERM (after `install`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.where: list[str] = []  # labels of the `during` blocks it left, innermost first
        self.resume: str | None = None  # what a rerun keeps (the innermost block that said)

    @property
    def exit_code(self) -> int:
        """128 + signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum

    def message(self, command: str) -> str:
        """One line (after "interrupted: "): the signal, what it interrupted, what a rerun keeps, and the
        command that resumes."""
        name = signal.Signals(self.signum).name
        what = ", in ".join(self.where) if self.where else command.split(" --")[0]
        keeps = f"{self.resume}; " if self.resume else ""
        return f"{name} during {what}; {keeps}resume with the same command: {command}"


@contextmanager
def during(label: str, resume: str | None = None) -> Iterator[None]:
    """Label the work inside for the interruption message; `resume` says what a rerun keeps or redoes."""
    try:
        yield
    except Interrupted as e:
        e.where.append(label)
        if resume and e.resume is None:
            e.resume = resume
        raise


def install() -> Callable[[], None]:
    """Make SIGINT and SIGTERM raise `Interrupted` in the main thread. Returns a function restoring the
    previous handlers. A signal the parent set to be ignored (a background job in a non-interactive
    shell) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum: int, frame: object) -> None:
        for s in old:
            signal.signal(s, signal.SIG_DFL)  # a second signal ends the process at once
        raise Interrupted(signum)

    for s, h in old.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            if h is not None:  # None: a handler installed from C, which Python cannot put back
                signal.signal(s, h)

    return restore
