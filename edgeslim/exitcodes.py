"""How a command ends, in one line and one exit status (the CLI's `main` uses these).

0 success; 1 a user error (`EdgeslimError`) or the machine refusing (disk full, read-only folder,
permission denied: nothing edgeslim can fix); 2 an internal error (a bug); 128 + N when signal N
(SIGINT 130, SIGTERM 143) interrupted the command (`edgeslim.interrupt`).
"""

from __future__ import annotations

import errno
import shlex
import sys

# OSErrors that come from the machine or the user's paths, not from a bug: reported in one line, exit 1
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO,
    errno.EFBIG, errno.EXDEV, errno.ENOTEMPTY, errno.ELOOP,
})


def command_line(argv: list[str] | None = None) -> str:
    """The command as the user typed it (program name `edgeslim`), quoted for a shell."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["edgeslim", *args])


def is_environment_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS


def os_error_line(e: OSError) -> str:
    """`PATH: No space left on device` and what to do about it."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space and run the same command again (finished work is kept)",
            errno.EDQUOT: "the disk quota is used up; free some space and run the same command again",
            errno.EROFS: "the folder is read-only; pick another output folder",
            errno.EACCES: "no permission; pick another path or fix the permissions",
            errno.ENOMEM: "out of memory; try a smaller --batch-size or fewer calibration samples",
            errno.EEXIST: "a file is where a folder is needed; pick another path",
            errno.ENOTDIR: "a file is where a folder is needed; pick another path"}.get(e.errno or 0)
    return f"{where}{what}" + (f" ({hint})" if hint else "")


def internal_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return (f"{type(e).__name__}: {first} (a bug in edgeslim; EDGESLIM_DEBUG=1 shows the traceback)")
