"""One process per run folder, and claiming a run folder without touching it before the run is valid.

The lock is `flock` on the run folder itself (no lock file to leave behind or to delete under another
process's feet). The kernel drops it when the process ends however it ends, SIGKILL included, so a
killed run never leaves the folder stuck. Where `fcntl` is missing (Windows) or the filesystem refuses
locks (some NFS mounts), runs go ahead unlocked: the lock guards against a mistake, not an attack.

A folder is claimed in two steps: `check_claim` (read-only, before anything is written: a refused run
leaves no folder, or leaves a folder that was there untouched) and `claim` (under the lock: clears a
folder `--force` replaces, sweeps temporary files a killed process left, writes `run.json`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeslim.errors import EdgeslimError
from edgeslim.fsutil import write_json

META = "run.json"
RECORDED = ("device", "accelerator")  # written into run.json beside the identity, not part of it (a change re-measures)


@contextmanager
def hold(folder: Path, what: str = "run folder") -> Iterator[None]:
    """Create `folder` if needed and hold an exclusive lock on it for the block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgeslimError(
                f"{folder}: {what} is in use by another edgeslim process; wait for it to finish or pick "
                "another --out"
            ) from None
        except OSError:  # ENOLCK and friends: this filesystem has no locks; go ahead unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_meta(out: Path, full: bool = False) -> dict | None:
    """run.json: its identity keys (all of it with `full`); None when unreadable."""
    try:
        old = json.loads((out / META).read_text())
    except (OSError, ValueError):
        return None  # unreadable or corrupt: treated as a different run
    if not isinstance(old, dict):
        return None
    return old if full else {k: v for k, v in old.items() if k not in RECORDED}


def recorded(out: Path, key: str) -> object:
    """What run.json recorded beside the identity (e.g. the device), or None."""
    return (_read_meta(Path(out), full=True) or {}).get(key)


def _entries(out: Path) -> list[Path]:
    return list(out.iterdir()) if out.is_dir() else []


def check_claim(out: Path, ident: dict, force: bool) -> None:
    """Refuse (without writing anything) a run folder that holds something else, unless `force`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgeslimError(f"{out}: exists and is not a folder; pick another --out")
    if force or not _entries(out):
        return
    if (out / META).exists():
        old = _read_meta(out)
        if old == ident:
            return
        diff = [k for k in ident if old is None or old.get(k) != ident[k]]
        why = f"{', '.join(diff)} differ" if old is not None else f"its {META} is unreadable"
        raise EdgeslimError(
            f"{out}: holds a different run ({why}); use --force to overwrite or pick another --out"
        )
    raise EdgeslimError(f"{out}: folder exists and is not an edgeslim run; use --force or another --out")


def claim(out: Path, ident: dict, force: bool, record: dict | None = None) -> bool:
    """Under `hold(out)`: make `out` hold this run, with `record` (RECORDED keys) written beside its identity.
    Returns True when it resumes the same run."""
    out = Path(out)
    check_claim(out, ident, force)  # again, under the lock: another process may have changed it
    if _read_meta(out) == ident:
        sweep_temporaries(out)
        if record and {k: recorded(out, k) for k in record} != record:
            write_json(out / META, {**ident, **record})
        return True
    for p in _entries(out):  # --force: empty the folder but keep it (the lock is on this inode)
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    write_json(out / META, {**ident, **(record or {})})
    return False


@contextmanager
def claimed(out: Path, ident: dict, force: bool, device: str, record: dict | None = None) -> Iterator[str | None]:
    """Hold `out` for the run `ident` while the body runs it: checked, locked, claimed with `record` (RECORDED
    keys: where training runs). Yields the device the finished stages were measured for when this resumes a
    run on another device, else None. `device` is written only once the body finished: a failed or
    interrupted retry never rewrites the device run.json names."""
    check_claim(out, ident, force)
    with hold(out):
        before = recorded(out, "device")
        resumed = claim(out, ident, force, record)
        yield str(before) if resumed and before not in (None, device) else None
        claim(out, ident, False, {**(record or {}), "device": device})


def sweep_temporaries(out: Path) -> list[Path]:
    """Remove the `.NAME.*.tmp` files and folders an atomic write left when its process was killed
    (SIGKILL, power loss). Only call it while holding the folder's lock."""
    gone = []
    for parent in (out, out / "stages"):
        if not parent.is_dir():
            continue
        for p in parent.glob(".*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    return gone
