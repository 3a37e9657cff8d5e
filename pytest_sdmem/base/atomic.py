"""Write a file so that a reader sees the old content or the new one whole, never a part.

Results, baselines, snapshots and budgets files are all read by other tools (a CI step, a
later run): a crash or a full disk mid-write must not leave a truncated file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], content: str | bytes, *,
                 mode: int | None = None) -> Path:
    """Write ``content`` to a temporary file beside ``path``, flush it to disk, then rename it
    over ``path``. The file gets ``mode``, by default what the umask gives a new file
    (``mkstemp`` would leave it private, 0600, and these files are shared like any other)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        data = content.encode("utf-8") if isinstance(content, str) else content
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
