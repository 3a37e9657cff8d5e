"""The one way the plugin and the ``sdmem`` command read a file a user named.

A results file, a baseline or a budgets file is whatever path someone typed, so it may be a
FIFO (``open`` would block the whole session waiting for a writer), a directory, a device such
as ``/dev/zero`` (endless), or a file far larger than any real one (read whole into memory).
Each is refused here, before any content is read, with a message naming the file and why.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MiB = 1024**2

#: Results files: a record is a few KB, so this is room for hundreds of thousands of tests.
MAX_RESULTS_BYTES = 256 * MiB
#: A budgets file is a page of TOML written by hand (plus calibrated overheads).
MAX_BUDGETS_BYTES = 4 * MiB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UserFileError(ValueError):
    """A user's file that is not read; ``problem`` says why, ``str()`` also names the file."""

    def __init__(self, what: str, path: Path, problem: str) -> None:
        super().__init__(f"{what} {path}: {problem}")
        self.path = path
        self.problem = problem


def _kind(mode: int) -> str:
    return next((word for test, word in _KINDS if test(mode)), "not a regular file")


def read_user_file(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (a ``what``, e.g. "budgets file"), at most
    ``max_bytes`` of them, or a :class:`UserFileError`.

    Opened non-blocking, then checked on the open descriptor: a FIFO is refused without waiting
    for a writer, and a file swapped between a check and the open cannot slip through. Reading
    stops one byte past the limit, so a file that grows while read is refused too.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise UserFileError(what, path, f"cannot read it: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(what, path, f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise UserFileError(what, path, f"{info.st_size} bytes, larger than the "
                                f"{max_bytes} bytes such a file may have")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserFileError(what, path, f"cannot read it: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UserFileError(what, path, f"larger than the {max_bytes} bytes such a file may have")
    return data
