"""Atomic writes: a run folder is never left half-written.

Every file goes to a temporary sibling and is renamed into place; a stage folder is built under a
temporary name and renamed as a whole once complete, so a killed process leaves either the old state
or the new one, never a mix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)
# errors that mean the machine refused the write (full disk, quota, read-only, permissions)
REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically. A full disk (or any refused write) raises `EdgeslimError` naming
    the file and leaves the previous file, if any, as it was."""
    write_many({Path(path): data})


def write_many(files: dict[Path, bytes]) -> None:
    """Write several files (e.g. a model's weights and spec) as one step: every temporary file is written
    first and only then are all renamed into place, so a full disk leaves the old set complete."""
    tmps: dict[Path, str] = {}
    path = next(iter(files))
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as e:
        _discard(tmps.values())
        raise _refused(e, path, "the previous file, if any, is unchanged") from None
    except BaseException:
        _discard(tmps.values())
        raise


def _discard(tmps: Iterable[str]) -> None:
    for t in tmps:
        Path(t).unlink(missing_ok=True)


def _refused(e: OSError, path: Path, kept: str) -> OSError:
    """A write the machine refused (full disk, quota, read-only, permissions): the same OSError naming the
    file and saying what was kept, which the CLI prints in one line with exit 1
    (`edgeslim.exitcodes`). Other OSErrors pass through unchanged."""
    if e.errno not in REFUSED:
        return e
    return OSError(e.errno, f"{e.strerror or e}; {kept}", str(path))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """`obj` as the indented JSON edgeslim writes (numpy scalars/arrays and paths allowed)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _refused(e, final, "nothing of it was kept") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
