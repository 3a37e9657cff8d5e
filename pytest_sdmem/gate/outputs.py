"""Where a run writes: checked before anything runs, and never onto a file it reads.

A path that cannot be written is found at configure time (a usage error naming it), not after
an hour of GPU tests; and no output may be the baseline being compared against, nor another
output, whatever spelling, symlink or hard link names it: writing one would silently replace
the other. Shared by the pytest plugin (exit 4) and the ``sdmem`` command (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pytest_sdmem.gate.settings import Settings


class OutputError(ValueError):
    """An output location that cannot be used; the message names the option and the path."""


@dataclass(frozen=True)
class Location:
    """A path the run reads or writes, with the option that named it (for messages)."""

    option: str
    path: Path
    kind: Literal["file", "dir"] = "file"

    def __str__(self) -> str:
        return f"{self.option} {self.path}"


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once symlinks are resolved (this
    holds for paths that do not exist yet too), or, both existing, the same inode on the same
    device (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): no hard link to it either
        return False


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of ``path`` that exists (the writers create the rest)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def output_problem(location: Location) -> str | None:
    """Why ``location`` cannot be written, or None. Directories that do not exist yet are
    created by the writers, so the closest existing ancestor must be a writable directory."""
    path = location.path
    if location.kind == "file" and path.is_dir():
        return "is a directory"
    if location.kind == "dir" and path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if path.exists() and not os.access(path, os.W_OK):
        return "is not writable"
    if location.kind == "dir" and path.is_dir():
        return None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = _nearest_existing(path)
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: directory {parent} is not writable"
    return None


def check_locations(outputs: Sequence[Location], inputs: Sequence[Location] = ()) -> None:
    """Raise :class:`OutputError` for the first output that cannot be written, or that is
    the same file as an input or as another output."""
    for output in outputs:
        if (problem := output_problem(output)) is not None:
            raise OutputError(f"{output} {problem}")
    files = [o for o in outputs if o.kind == "file"]
    for i, output in enumerate(files):
        for other in inputs:
            if same_file(output.path, other.path):
                raise OutputError(
                    f"{output} is the same file as {other}: writing it would replace what this "
                    "run reads (a baseline is never overwritten by the run compared with it); "
                    "write elsewhere")
        for other in files[i + 1:]:
            if same_file(output.path, other.path):
                raise OutputError(f"{output} and {other} are the same file: one would "
                                  "overwrite the other; give each its own path")


def session_locations(settings: Settings, junitxml: str | None
                      ) -> tuple[list[Location], list[Location]]:
    """What a pytest session writes (its results, baseline, snapshots and pytest's own JUnit
    report) and what it reads (the baseline it compares with)."""
    outputs = [Location(option, path) for option, path in (
        ("--sdmem-json", settings.json_path), ("--sdmem-save", settings.save_path),
        ("--junitxml", Path(junitxml).expanduser() if junitxml else None)) if path is not None]
    if settings.snapshot_dir is not None:
        outputs.append(Location("--sdmem-snapshot-dir", settings.snapshot_dir, "dir"))
    inputs = ([Location("--sdmem-compare", settings.compare_path)]
              if settings.compare_path is not None else [])
    return outputs, inputs
