"""Headless Chromium for the report tests (Debian's package; the tests skip without it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def images_loaded(page: Path, work: Path, min_px: int = 0) -> tuple[int, int]:
    """Open `page` in headless Chromium; (images on the page, images decoded wider and taller than `min_px`)."""
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.dataset.imgs=i.length;"
             f"document.body.dataset.ok=i.filter(x=>x.complete&&x.naturalWidth>{min_px}&&x.naturalHeight>{min_px})"
             ".length;});</script>")
    check = work / "check.html"
    check.write_text(page.read_text().replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [str(chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=5000", "--run-all-compositor-stages-before-draw", "--dump-dom",
             check.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    m = re.search(r'<body data-imgs="(\d+)" data-ok="(\d+)"', p.stdout)
    assert m, p.stderr[-2000:]
    return int(m.group(1)), int(m.group(2))
