"""Headless Chromium for the report tests (Debian's `chromium` package; `.ci/run` installs it).

On a developer machine without Chromium the tests skip; under `CI=true` a missing Chromium fails them, so
CI cannot pass without rendering a report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


# skip without Chromium, except in CI: there the test runs and `images_loaded` fails naming what is missing
needs_chromium = pytest.mark.skipif(chromium() is None and not in_ci(),
                                    reason="Chromium not installed (apt-get install chromium)")


def images_loaded(page: Path, work: Path, min_px: int = 0) -> tuple[int, int]:
    """Open `page` in headless Chromium; (images on the page, images decoded wider and taller than `min_px`)."""
    exe = chromium()
    if exe is None:
        pytest.fail("CI=true and no Chromium on PATH: install Debian's chromium package (.ci/run does)")
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.dataset.imgs=i.length;"
             f"document.body.dataset.ok=i.filter(x=>x.complete&&x.naturalWidth>{min_px}&&x.naturalHeight>{min_px})"
             ".length;});</script>")
    check = work / "check.html"
    check.write_text(page.read_text().replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=5000", "--run-all-compositor-stages-before-draw", "--dump-dom",
             check.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    m = re.search(r'<body data-imgs="(\d+)" data-ok="(\d+)"', p.stdout)
    assert m, p.stderr[-2000:]
    return int(m.group(1)), int(m.group(2))
