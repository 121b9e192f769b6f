"""Test hook for the interruption tests (put on PYTHONPATH of a child process by reliability_helpers.start).

When the child writes a line holding $EDGESLIM_TEST_PAUSE_ON to stdout, it flushes and sleeps
$EDGESLIM_TEST_PAUSE_S seconds (once), so the parent's signal lands inside that stage however loaded the
machine is. Without the hook a tiny job could finish between printing the line and the parent reading it.
"""

from __future__ import annotations

import os
import sys
import time

_MARKER = os.environ.get("EDGESLIM_TEST_PAUSE_ON")


class _PausingStdout:
    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self._inner = inner
        self._paused = False
        self._seen = ""

    def write(self, s: str) -> int:
        n = self._inner.write(s)
        if self._paused or not _MARKER:
            return n
        self._seen += s
        at = self._seen.find(_MARKER)
        if at >= 0 and "\n" in self._seen[at:]:  # the whole line is out (Rich may write its end apart)
            self._paused = True
            self._inner.flush()
            time.sleep(float(os.environ.get("EDGESLIM_TEST_PAUSE_S", "30")))
        elif "\n" in s and at < 0:
            self._seen = self._seen[-len(_MARKER):]  # keep memory small: only a possible marker's start
        return n

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


if _MARKER:
    sys.stdout = _PausingStdout(sys.stdout)
